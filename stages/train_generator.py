"""Stage `train_generator@<name>`: train one generator family on the source classes only."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger

from pipeline import tracking
from pipeline.config import TrackingConfig, TrainerConfig, load_params, section
from pipeline.data import OmniglotSet
from pipeline.generators import get_family, save_generator
from pipeline.generators.blocks import SameClassPairs
from pipeline.io import atomic_dir, write_json
from pipeline.synthesis import sample_grid, synthesize_from_exemplars
from pipeline.training import build_trainer, configure_torch, export_model, prepare_model, with_overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="generator family, a key of pipeline.generators.GENERATORS")
    ap.add_argument("--data", required=True, help="prepared omniglot.npz")
    ap.add_argument("--out", required=True, help="output folder: model.pt, metrics.csv, samples.png")
    args = ap.parse_args()

    params = load_params(args.params)
    family = get_family(args.name)
    cfg: Any = section(params, family.config, f"generator.{args.name}")
    trainer_cfg = with_overrides(section(params, TrainerConfig, "trainer"), cfg)
    tracking_cfg = section(params, TrackingConfig, "tracking")
    uri = tracking.setup(tracking_cfg)
    configure_torch(trainer_cfg)

    dataset = OmniglotSet.load(args.data)
    source = dataset.indices("source")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = prepare_model(family.build(cfg, int(dataset.images.shape[-1])), trainer_cfg)
    module = family.module(model, cfg)
    loader = torch.utils.data.DataLoader(
        SameClassPairs(dataset.images[source], dataset.labels[source], cfg.batch_size, cfg.seed,
                       targets=getattr(cfg, "real_targets", 1)),
        batch_size=None, num_workers=1, persistent_workers=True,
    )

    out = Path(args.out)
    with atomic_dir(out) as tmp:
        loggers: list = [CSVLogger(tmp, name="", version="")]
        if uri is not None:
            loggers.append(MLFlowLogger(experiment_name=tracking_cfg.experiment, tracking_uri=uri,
                                        run_name=f"generator:{args.name}",
                                        tags=tracking.run_tags(kind="generator", generator=args.name)))
        # GANs step two optimizers per batch, and Lightning counts each step.
        steps = cfg.max_steps * getattr(module, "optimizer_steps_per_batch", 1)
        trainer = build_trainer(trainer_cfg, steps, loggers)
        start = time.perf_counter()
        trainer.fit(module, loader)
        seconds = time.perf_counter() - start
        images_per_s = cfg.max_steps * cfg.batch_size / seconds  # training pairs through the model per second
        print(f"train_generator@{args.name}: {cfg.max_steps} steps in {seconds:.0f} s, {images_per_s:.0f} pairs/s")

        save_generator(args.name, export_model(model), tmp / "model.pt",
                       extra={"train_config": vars(cfg)})
        # A look at what it learned: held-out drawers' classes are not needed, source exemplars suffice.
        rng = np.random.default_rng(cfg.seed)
        picks = rng.choice(dataset.classes("source"), size=min(8, len(dataset.classes("source"))), replace=False)
        exemplars = dataset.images[[np.flatnonzero(dataset.labels == c)[0] for c in picks]]
        drawn = synthesize_from_exemplars(model, exemplars, 10, torch.Generator().manual_seed(cfg.seed))
        rows = [(str(dataset.class_alphabet[c]), e, d) for c, e, d in zip(picks, exemplars, drawn, strict=True)]
        sample_grid(rows).save(tmp / "samples_source.png")
        run_id = None
        if uri is not None:
            mlf = loggers[1]
            mlf.experiment.log_artifact(mlf.run_id, str(tmp / "samples_source.png"))
            mlf.experiment.log_metric(mlf.run_id, "perf/pairs_per_s", images_per_s)
            run_id = mlf.run_id
        write_json(tmp / "run.json", {"mlflow_run_id": run_id, "tracking_uri": uri, "train_seconds": round(seconds, 1),
                                      "pairs_per_s": round(images_per_s, 1)})


if __name__ == "__main__":
    main()
