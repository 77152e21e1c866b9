"""Stage `sweep@<generator>`: headline accuracy against the number of synthetic drawings per exemplar.

For each count of `sweep.counts`, a classifier is trained on the one-shot exemplars plus the
first `count` synthetic drawings of each (classic transforms on top, every other setting as in
the variants) and scored on the evaluation's headline episodes. Counts that a pipeline classifier
already covers with the very same settings (0: `classic`; `synthesis.n_per_exemplar`: the
generator's own variant) are scored from that classifier instead of being trained again.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.network import SiameseNet, load_siamese
from pipeline.classifiers.training import fit_generator_variant
from pipeline.config import TrainerConfig, load_params, section
from pipeline.data.augment import ClassicAugmentConfig
from pipeline.data.episodes import mean_ci95
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor
from pipeline.data.synthetic import SyntheticSet
from pipeline.evaluation import EvaluationConfig, build_episodes, per_episode_accuracy
from pipeline.generators.synthesis import SweepConfig
from pipeline.io import atomic_path
from pipeline.lifecycle import guard_stage
from pipeline.training import configure_torch


def reusable(ckpt: dict, generator: str, cfg: SiameseConfig, augment: ClassicAugmentConfig) -> int | None:
    """The synthetic count a pipeline classifier was trained with, if it matches a sweep point exactly."""
    v = ckpt.get("variant_config", {})
    kinds = list(v.get("train_on", ()))
    if (not (kinds == ["exemplars"] or (kinds == ["exemplars", "synthetic"] and v.get("synthetic") == generator))
            or not v.get("classic") or ckpt.get("siamese_config") != dataclasses.asdict(cfg)
            or ckpt.get("augment_config") != dataclasses.asdict(augment)):
        return None
    return int(ckpt["images_per_class"][0]) - 1


def main() -> None:
    guard_stage()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--generator", required=True)
    ap.add_argument("--data", required=True, help="prepared dataset.npz")
    ap.add_argument("--synthetic", required=True, help="the generator's synthetic set folder")
    ap.add_argument("--reuse", nargs="*", default=[], help="pipeline classifier folders to score instead of retraining")
    ap.add_argument("--out", required=True, help="CSV: n_synthetic, accuracy, CI, paired delta to 0")
    args = ap.parse_args()

    params = load_params(args.params)
    sweep = section(params, SweepConfig, "sweep")
    cfg = section(params, SiameseConfig, "siamese")
    augment = section(params, ClassicAugmentConfig, "augment")
    evaluation = section(params, EvaluationConfig, "evaluation")
    trainer_cfg = section(params, TrainerConfig, "trainer")
    configure_torch(trainer_cfg)

    dataset = FewShotSet.load(args.data)
    synthetic = SyntheticSet.load(args.synthetic)
    if synthetic.generator != args.generator:
        raise ValueError(f"{args.synthetic} holds drawings of {synthetic.generator!r}, not {args.generator!r}")
    headline = evaluation.headline
    episodes = {headline: build_episodes(dataset, evaluation)[headline]}
    images = to_tensor(dataset.images)

    nets: dict[int, SiameseNet] = {}
    for folder in args.reuse:
        net, ckpt = load_siamese(Path(folder))
        count = reusable(ckpt, args.generator, cfg, augment)
        if count in sweep.counts:
            nets[count] = net
            print(f"n_synthetic={count}: scored from {folder}")
    accuracy = {}
    for count in sweep.counts:
        if count not in nets:
            print(f"n_synthetic={count}: training")
            nets[count] = fit_generator_variant(dataset, synthetic, count, cfg, trainer_cfg, augment)
        accuracy[count] = per_episode_accuracy(nets[count], embed_all(nets[count], images), episodes)[headline]

    zero = accuracy[sweep.counts[0]]
    rows = []
    for count, acc in accuracy.items():
        mean, ci = mean_ci95(acc)
        delta, delta_ci = mean_ci95(acc - zero)
        rows.append({"generator": args.generator, "n_synthetic": count, f"acc_{headline}": round(mean, 5),
                     f"acc_{headline}_ci95": round(ci, 5), f"delta_vs_{sweep.counts[0]}": round(delta, 5),
                     f"delta_vs_{sweep.counts[0]}_ci95": round(delta_ci, 5)})
        print(f"{args.generator} n_synthetic={count:>3}: acc_{headline} {mean:.3f} +/- {ci:.3f}")
    with atomic_path(args.out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


if __name__ == "__main__":
    main()
