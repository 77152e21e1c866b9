"""How far a generator variant's accuracy moves with the draw of its synthetic drawings.

The pipeline scores each variant once, with one synthesis seed and one classifier seed; its paired
CI covers the sampling of evaluation episodes only. This re-draws a generator's synthetic drawings
with other synthesis seeds (every other param as in params.yaml: the same count per exemplar, the
same temperature, the same classifier), trains the variant's classifier on each draw, and scores it
on the headline episodes against the pipeline's `classic` classifier. Seed = `synthesis.seed`
reproduces the pipeline's own figure. Prints each draw and the mean and spread of the differences.

    python benchmarks/seeds.py --generator models/generators/gan --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.network import load_siamese
from pipeline.classifiers.training import fit_generator_variant
from pipeline.config import TrainerConfig, load_params, section
from pipeline.data.augment import ClassicAugmentConfig
from pipeline.data.episodes import mean_ci95
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor
from pipeline.data.synthetic import SyntheticSet
from pipeline.evaluation import EvaluationConfig, build_episodes, per_episode_accuracy
from pipeline.generators import load_generator
from pipeline.generators.synthesis import SweepConfig, SynthesisConfig, synthesize_from_exemplars
from pipeline.training import configure_torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--generator", required=True, help="generator checkpoint (its folder or model.safetensors)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="synthesis seeds to draw with")
    ap.add_argument("--data", default="data/prepared/dataset.npz")
    ap.add_argument("--classic", default="models/classifiers/classic", help="the reference classifier (its folder)")
    args = ap.parse_args()

    params = load_params(args.params)
    synthesis = section(params, SynthesisConfig, "synthesis")
    sweep = section(params, SweepConfig, "sweep")
    cfg = section(params, SiameseConfig, "siamese")
    augment = section(params, ClassicAugmentConfig, "augment")
    evaluation = section(params, EvaluationConfig, "evaluation")
    trainer_cfg = section(params, TrainerConfig, "trainer")
    configure_torch(trainer_cfg)

    dataset = FewShotSet.load(args.data)
    model, extra = load_generator(args.generator)
    headline = evaluation.headline
    episodes = {headline: build_episodes(dataset, evaluation)[headline]}
    images = to_tensor(dataset.images)
    classic, _ = load_siamese(args.classic)
    reference = per_episode_accuracy(classic, embed_all(classic, images), episodes)[headline]
    print(f"classic ({args.classic}): acc_{headline} {reference.mean():.4f}")

    exemplars = dataset.images[dataset.exemplar_indices()]
    # As synthesize draws: the largest count of the run per exemplar, of which the variant takes the first.
    n = sweep.drawn_per_exemplar(synthesis.n_per_exemplar)
    deltas = []
    for seed in args.seeds:
        start = time.perf_counter()
        drawn = synthesize_from_exemplars(model, exemplars, n, torch.Generator().manual_seed(seed),
                                          synthesis.temperature)
        synthetic = SyntheticSet(images=drawn.reshape(-1, *exemplars.shape[1:]),
                                 labels=np.repeat(dataset.classes("train"), n), generator=extra["family"],
                                 info={"seed": seed})
        net = fit_generator_variant(dataset, synthetic, synthesis.n_per_exemplar, cfg, trainer_cfg, augment)
        acc = per_episode_accuracy(net, embed_all(net, images), episodes)[headline]
        delta, ci = mean_ci95(acc - reference)
        deltas.append(delta)
        print(f"synthesis.seed={seed}: acc_{headline} {acc.mean():.4f}, minus classic {delta:+.4f} +/- {ci:.4f} "
              f"(paired CI over episodes) [{time.perf_counter() - start:.0f} s]")
    d = np.array(deltas)
    spread = f", sd over draws {d.std(ddof=1):.4f}, range [{d.min():+.4f}, {d.max():+.4f}]" if len(d) > 1 else ""
    print(f"{extra['family']} minus classic over {len(d)} draws: mean {d.mean():+.4f}{spread}")


if __name__ == "__main__":
    main()
