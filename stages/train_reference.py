"""Stage `train_reference`: the fixed reference embedding that measures what the generators make.

A Siamese network trained on the source classes only (all their real images, classic
transforms): the classes the generators learn from, never a one-shot training or novel class, so
it judges every generator's novel-class drawings from the same, independent point of view.
"""

from __future__ import annotations

import argparse
import dataclasses

from pytorch_lightning.loggers import CSVLogger

from pipeline import tracking
from pipeline.checkpoints import FILENAME
from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.network import save_siamese
from pipeline.classifiers.training import fit_siamese
from pipeline.config import TrackingConfig, TrainerConfig, load_params, section
from pipeline.data.augment import ClassicAugmentConfig, classic_transform
from pipeline.data.fewshot import FewShotSet
from pipeline.io import write_json
from pipeline.lifecycle import guard_stage
from pipeline.training import MLFlowLogger, configure_torch, is_rank_zero, output_dir
from pipeline.variants import source_pools


def main() -> None:
    guard_stage()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", required=True, help="prepared dataset.npz")
    ap.add_argument("--out", required=True, help="output folder: model.safetensors, metrics.csv, run.json")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = section(params, SiameseConfig, "reference", optional=SiameseConfig.REFERENCE_OMITS)
    augment = section(params, ClassicAugmentConfig, "augment")
    trainer_cfg = section(params, TrainerConfig, "trainer")
    tracking_cfg = section(params, TrackingConfig, "tracking")
    # One MLflow run, one output: rank zero's; the other ranks of a distributed run only train alongside it.
    uri = tracking.setup(tracking_cfg) if is_rank_zero() else None
    configure_torch(trainer_cfg)

    dataset = FewShotSet.load(args.data)
    pools = source_pools(dataset)
    with output_dir(args.out) as tmp:
        loggers: list = [CSVLogger(tmp, name="", version="")]
        if uri is not None:
            loggers.append(MLFlowLogger(experiment_name=tracking_cfg.experiment, tracking_uri=uri,
                                        run_name="reference embedding", tags=tracking.run_tags(kind="reference")))
        net = fit_siamese(pools, cfg, trainer_cfg, loggers, transform=classic_transform(augment, cfg.seed),
                          params_key="reference")
        if not is_rank_zero():
            return  # rank zero saves and logs the network all ranks trained
        save_siamese(net, tmp / FILENAME, extra={
            "variant": "reference", "siamese_config": dataclasses.asdict(cfg),
            "augment_config": dataclasses.asdict(augment), "classes": "source",
            "images_per_class": [len(p) for p in pools], "image_spec": dataclasses.asdict(dataset.spec)})
        if uri is not None:
            tracking.log_dataset(loggers[1].experiment, loggers[1].run_id, args.data, "training")
        write_json(tmp / "run.json", {"mlflow_run_id": loggers[1].run_id if uri else None, "tracking_uri": uri})
    print(f"reference embedding: {len(pools)} source classes, {cfg.max_steps} steps -> {args.out}")


if __name__ == "__main__":
    main()
