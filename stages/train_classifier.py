"""Stage `train_classifier@<variant>`: train the Siamese network on one variant's training sources, then
calibrate its verification threshold on pairs of the calibration classes (which no classifier trains on)."""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter

from pytorch_lightning.loggers import CSVLogger

from pipeline import tracking
from pipeline.checkpoints import FILENAME
from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.network import save_siamese
from pipeline.classifiers.training import calibrate_on_held_out, calibration_classes, fit_siamese, seen_validation
from pipeline.config import TrackingConfig, TrainerConfig, load_params, section
from pipeline.data.augment import ClassicAugmentConfig, classic_transform
from pipeline.data.fewshot import FewShotSet
from pipeline.data.synthetic import SyntheticSet
from pipeline.export import export_checkpoint
from pipeline.io import write_json
from pipeline.lifecycle import guard_stage
from pipeline.training import MLFlowLogger, configure_torch, is_rank_zero, output_dir
from pipeline.variants import VariantConfig, training_set


def main() -> None:
    guard_stage()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--variant", required=True)
    ap.add_argument("--data", required=True, help="prepared dataset.npz")
    ap.add_argument("--synthetic", required=True, help="synthetic set folder (empty for the real-only variants)")
    ap.add_argument("--out", required=True, help="output folder: model.safetensors, model.onnx, metrics.csv, run.json")
    args = ap.parse_args()

    params = load_params(args.params)
    variant = section(params, VariantConfig, f"variants.{args.variant}")
    cfg = variant.training_config(section(params, SiameseConfig, "siamese"), f"variants.{args.variant}")
    augment = section(params, ClassicAugmentConfig, "augment")
    trainer_cfg = section(params, TrainerConfig, "trainer")
    tracking_cfg = section(params, TrackingConfig, "tracking")
    # One MLflow run, one output: rank zero's; the other ranks of a distributed run only train alongside it.
    uri = tracking.setup(tracking_cfg) if is_rank_zero() else None
    configure_torch(trainer_cfg)

    dataset = FewShotSet.load(args.data)
    calibration_classes(dataset)  # before the training, not after
    synthetic = SyntheticSet.load(args.synthetic)
    if synthetic.generator != variant.synthetic:
        raise ValueError(f"{args.synthetic} holds drawings of generator {synthetic.generator!r}, but "
                         f"variants.{args.variant}.synthetic is {variant.synthetic!r}")
    # The first `synthesis.n_per_exemplar` of each class, as the set records it: the synthesis stage
    # may draw more, for the sweep.
    classes, pools = training_set(dataset, variant, synthetic, synthetic.variant_count)
    transform = classic_transform(augment, cfg.seed) if variant.classic else None

    with output_dir(args.out) as tmp:
        loggers: list = [CSVLogger(tmp, name="", version="")]
        if uri is not None:
            loggers.append(MLFlowLogger(
                experiment_name=tracking_cfg.experiment, tracking_uri=uri, run_name=f"train:{args.variant}",
                tags=tracking.run_tags(kind="training", variant=args.variant, generator=variant.synthetic)))
        net = fit_siamese(pools, cfg, trainer_cfg, loggers, transform=transform,
                          val_data=seen_validation(dataset, cfg.seed))
        if not is_rank_zero():
            return  # rank zero calibrates, saves and logs the network all ranks trained
        verify = calibrate_on_held_out(net, dataset, cfg)
        if uri is not None:
            loggers[1].log_metrics({"verify/threshold": verify.threshold, "verify/far": verify.far,
                                    "verify/frr": verify.frr}, step=cfg.max_steps)
            tracking.log_dataset(loggers[1].experiment, loggers[1].run_id, args.data, "training")
        save_siamese(net, tmp / FILENAME, extra={
            "variant": args.variant, "variant_config": dataclasses.asdict(variant),
            "siamese_config": dataclasses.asdict(cfg), "augment_config": dataclasses.asdict(augment),
            "images_per_class": [len(p) for p in pools], "classes_by_role": dict(
                sorted(Counter(dataset.class_role[classes].tolist()).items())),
            "verify": dataclasses.asdict(verify),
            "image_spec": dataclasses.asdict(dataset.spec),
        })
        export_checkpoint(tmp / FILENAME)  # model.onnx: what `oneshot-gda` runs, without torch
        write_json(tmp / "run.json", {"mlflow_run_id": loggers[1].run_id if uri else None, "tracking_uri": uri})


if __name__ == "__main__":
    main()
