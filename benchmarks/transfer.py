"""Transfer, as DAGAN did from Omniglot to EMNIST: generators trained on one dataset, drawing for another's exemplars.

Takes a finished pipeline workspace of the target data (its params, prepared data and classifiers,
e.g. `make kanji` -> build/kanji) and generators trained elsewhere (e.g. the Omniglot pipeline's
models/generators/<g>). Each generator draws for the target's one-shot exemplars in the pipeline's
own layout (the same synthesis params and seed, at the target's image size: both generator families
are fully convolutional and move strokes in image-relative units); the target's generator variant
classifier is trained on those drawings, and scored on the target's evaluation episodes against its
`classic` classifier and against the in-domain generator variant (the target's own generator),
paired per episode. Prints a table and writes it, with the sample grids, to --out.

    python benchmarks/transfer.py --workspace build/kanji \
        --generators models/generators/vae models/generators/gan --out reports/transfer
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.network import load_siamese
from pipeline.classifiers.training import fit_generator_variant
from pipeline.config import TrainerConfig, load_params, section
from pipeline.data.augment import ClassicAugmentConfig
from pipeline.data.episodes import mean_ci95
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor
from pipeline.evaluation import EvaluationConfig, build_episodes, per_episode_accuracy
from pipeline.generators import load_generator
from pipeline.generators.synthesis import SweepConfig, SynthesisConfig, sample_grid, synthesize
from pipeline.io import atomic_path, write_json
from pipeline.training import configure_torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True, help="finished pipeline workspace of the target data")
    ap.add_argument("--generators", type=Path, nargs="+", required=True, help="generator folders trained elsewhere")
    ap.add_argument("--out", type=Path, required=True, help="folder for transfer.json and the sample grids")
    args = ap.parse_args()

    ws = args.workspace
    params = load_params(ws / "params.yaml")
    synthesis = section(params, SynthesisConfig, "synthesis")
    sweep = section(params, SweepConfig, "sweep")
    cfg = section(params, SiameseConfig, "siamese")
    augment = section(params, ClassicAugmentConfig, "augment")
    evaluation = section(params, EvaluationConfig, "evaluation")
    trainer_cfg = section(params, TrainerConfig, "trainer")
    configure_torch(trainer_cfg)

    dataset = FewShotSet.load(ws / "data" / "prepared" / "dataset.npz")
    episodes = build_episodes(dataset, evaluation)
    images = to_tensor(dataset.images)

    def score(folder: Path) -> dict[str, np.ndarray]:
        net, _ = load_siamese(folder)
        return per_episode_accuracy(net, embed_all(net, images), episodes)

    classic = score(ws / "models" / "classifiers" / "classic")
    rows = []
    for path in args.generators:
        start = time.perf_counter()
        model, extra = load_generator(path, image_size=dataset.image_size)
        family = extra["family"]
        if model.config["channels"] != dataset.channels:  # type: ignore[index]
            raise SystemExit(f"{path}: a {model.config['channels']}-channel generator, the target data has "  # type: ignore[index]
                             f"{dataset.channels} channels")
        drawn = synthesize(model, family, dataset, synthesis, sweep.drawn_per_exemplar(synthesis.n_per_exemplar))
        with atomic_path(args.out / f"samples_{family}_transfer.png") as tmp:
            sample_grid(drawn.grid_rows(dataset, synthesis), inverted=dataset.inverted).save(tmp, format="PNG")
        net = fit_generator_variant(dataset, drawn.train, synthesis.n_per_exemplar, cfg, trainer_cfg, augment)
        transfer = per_episode_accuracy(net, embed_all(net, images), episodes)
        own_folder = ws / "models" / "classifiers" / family
        own = score(own_folder) if own_folder.is_dir() else None
        row: dict[str, object] = {"generator": family, "trained_on": str(path), "seconds": round(time.perf_counter()
                                                                                                    - start)}
        for key, acc in transfer.items():
            row[f"acc_{key}"], row[f"acc_{key}_ci95"] = (round(v, 5) for v in mean_ci95(acc))
            row[f"delta_{key}_vs_classic"], row[f"delta_{key}_vs_classic_ci95"] = (
                round(v, 5) for v in mean_ci95(acc - classic[key]))
            if own is not None:
                row[f"acc_{key}_in_domain"] = round(float(own[key].mean()), 5)
                row[f"delta_{key}_vs_in_domain"], row[f"delta_{key}_vs_in_domain_ci95"] = (
                    round(v, 5) for v in mean_ci95(acc - own[key]))
        rows.append(row)
        head = evaluation.headline
        print(f"{family} trained on {path}: acc_{head} {row[f'acc_{head}']:.3f} (classic {classic[head].mean():.3f}, "
              f"in-domain {row.get(f'acc_{head}_in_domain', float('nan')):.3f}); vs classic "
              f"{row[f'delta_{head}_vs_classic']:+.3f} +/- {row[f'delta_{head}_vs_classic_ci95']:.3f} "
              f"[{row['seconds']} s]")
    write_json(args.out / "transfer.json", {"workspace": str(ws), "classic": {
        f"acc_{k}": round(float(v.mean()), 5) for k, v in classic.items()}, "transfer": rows})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
