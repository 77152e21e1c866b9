"""Stage `synthesize@<name>`: synthetic drawings from each one-shot exemplar and from novel-class exemplars.

Training classes get as many drawings as the largest of `synthesis.n_per_exemplar` and
`sweep.counts`; a variant takes the first n of each class, so the sweep's sets are nested.
Novel classes (never trained on) get `n_per_exemplar` each, for the synthetic-data measures
and the synthetic-support prototypes of the evaluation.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pipeline.config import load_params, section
from pipeline.data import OmniglotSet
from pipeline.generators import load_generator
from pipeline.io import atomic_dir, atomic_path
from pipeline.synthesis import SynthesisConfig, novel_exemplars, sample_grid, synthesize_from_exemplars
from pipeline.synthetic import SyntheticSet
from pipeline.variants import SweepConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--generator", required=True, help="generator checkpoint model.pt")
    ap.add_argument("--data", required=True, help="prepared omniglot.npz")
    ap.add_argument("--out", required=True, help="output folder for the synthetic set")
    ap.add_argument("--samples", required=True, help="sample grid PNG")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = section(params, SynthesisConfig, "synthesis")
    sweep = section(params, SweepConfig, "sweep")
    model, ckpt = load_generator(args.generator)
    dataset = OmniglotSet.load(args.data)
    generator = torch.Generator().manual_seed(cfg.seed)

    train_classes = dataset.classes("train")
    exemplars = dataset.images[dataset.exemplar_indices()]
    n = sweep.drawn_per_exemplar(cfg.n_per_exemplar)
    drawn = synthesize_from_exemplars(model, exemplars, n, generator, cfg.temperature)

    novel_idx = novel_exemplars(dataset, cfg.n_novel_classes, cfg.seed)
    novel = dataset.labels[novel_idx]
    novel_drawn = synthesize_from_exemplars(model, dataset.images[novel_idx], cfg.n_per_exemplar, generator,
                                            cfg.temperature)
    synthetic = SyntheticSet(
        images=drawn.reshape(-1, *exemplars.shape[1:]),
        labels=np.repeat(train_classes, n),
        generator=ckpt["family"],
        # The variants train on the first `variant_count` drawings of each class (the rest are the
        # sweep's): recorded here, so that train_classifier reads it from the set, not from params,
        # and a new count reruns only the classifiers whose set changed.
        info={"n_per_exemplar": n, "variant_count": cfg.n_per_exemplar, "temperature": cfg.temperature,
              "seed": cfg.seed, "classes": len(train_classes)},
    )
    with atomic_dir(args.out) as tmp:
        synthetic.save(tmp)
        np.savez_compressed(tmp / "novel.npz", exemplar_index=novel_idx,
                            images=novel_drawn.reshape(-1, *exemplars.shape[1:]),
                            labels=np.repeat(novel, cfg.n_per_exemplar))

    rows = []
    for kind, classes, ex, syn in (("train", train_classes, exemplars, drawn),
                                   ("novel", novel, dataset.images[novel_idx], novel_drawn)):
        # Rows spread over the classes (and so over the alphabets), not the first few of one alphabet.
        for k in np.unique(np.linspace(0, len(classes) - 1, min(cfg.grid_rows, len(classes))).astype(int)):
            label = f"{kind}: {dataset.class_alphabet[classes[k]]}"
            rows.append((label, ex[k], syn[k, :cfg.grid_columns]))
    with atomic_path(args.samples) as tmp_png:
        sample_grid(rows).save(tmp_png, format="PNG")
    print(f"synthesized {len(synthetic.images)} drawings for {len(train_classes)} training classes and "
          f"{novel_drawn.size // exemplars[0].size} for {len(novel)} novel classes -> {args.out}")


if __name__ == "__main__":
    main()
