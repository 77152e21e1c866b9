"""Stage `train_generator@<name>`: train one generator family on the source classes only."""

from __future__ import annotations

import argparse
from typing import Any

from pytorch_lightning.loggers import CSVLogger

from pipeline import tracking
from pipeline.checkpoints import FILENAME
from pipeline.config import TrackingConfig, TrainerConfig, load_params, section
from pipeline.data.fewshot import FewShotSet
from pipeline.generators import get_family, save_generator
from pipeline.generators.synthesis import sample_grid
from pipeline.generators.training import fit_generator, source_samples
from pipeline.io import write_json
from pipeline.lifecycle import guard_stage
from pipeline.training import MLFlowLogger, configure_torch, is_rank_zero, output_dir, with_overrides


def main() -> None:
    guard_stage()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="generator family, a key of pipeline.generators.CONFIGS")
    ap.add_argument("--data", required=True, help="prepared dataset.npz")
    ap.add_argument("--out", required=True, help="output folder: model.safetensors, metrics.csv, samples_source.png")
    args = ap.parse_args()

    params = load_params(args.params)
    family = get_family(args.name)
    cfg: Any = section(params, family.config, f"generator.{args.name}")
    trainer_cfg = with_overrides(section(params, TrainerConfig, "trainer"), cfg)
    tracking_cfg = section(params, TrackingConfig, "tracking")
    # One MLflow run, one output: rank zero's; the other ranks of a distributed run only train alongside it.
    uri = tracking.setup(tracking_cfg) if is_rank_zero() else None
    configure_torch(trainer_cfg)
    dataset = FewShotSet.load(args.data)

    with output_dir(args.out) as tmp:
        loggers: list = [CSVLogger(tmp, name="", version="")]
        if uri is not None:
            loggers.append(MLFlowLogger(experiment_name=tracking_cfg.experiment, tracking_uri=uri,
                                        run_name=f"generator:{args.name}",
                                        tags=tracking.run_tags(kind="generator", generator=args.name)))
        model, seconds = fit_generator(dataset, args.name, cfg, trainer_cfg, loggers)
        if not is_rank_zero():
            return  # rank zero saves, draws and logs the model all ranks trained
        pairs_per_s = cfg.max_steps * cfg.batch_size / seconds  # training pairs through the model per second
        print(f"train_generator@{args.name}: {cfg.max_steps} steps in {seconds:.0f} s, {pairs_per_s:.0f} pairs/s")
        save_generator(args.name, model, tmp / FILENAME, extra={"train_config": vars(cfg)})
        sample_grid(source_samples(model, dataset, cfg.seed), inverted=dataset.inverted).save(
            tmp / "samples_source.png")
        run_id = None
        if uri is not None:
            mlf = loggers[1]
            mlf.experiment.log_artifact(mlf.run_id, str(tmp / "samples_source.png"))
            mlf.experiment.log_metric(mlf.run_id, "perf/pairs_per_s", pairs_per_s)
            tracking.log_dataset(mlf.experiment, mlf.run_id, args.data, "training")
            run_id = mlf.run_id
        write_json(tmp / "run.json", {"mlflow_run_id": run_id, "tracking_uri": uri, "train_seconds": round(seconds, 1),
                                      "pairs_per_s": round(pairs_per_s, 1)})


if __name__ == "__main__":
    main()
