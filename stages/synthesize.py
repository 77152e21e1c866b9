"""Stage `synthesize@<name>`: N synthetic drawings from each one-shot exemplar, and the sample grid."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pipeline.config import load_params, section
from pipeline.data import OmniglotSet
from pipeline.generators import load_generator
from pipeline.io import atomic_dir, atomic_path
from pipeline.synthesis import SynthesisConfig, sample_grid, synthesize_from_exemplars
from pipeline.synthetic import SyntheticSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--generator", required=True, help="generator checkpoint model.pt")
    ap.add_argument("--data", required=True, help="prepared omniglot.npz")
    ap.add_argument("--out", required=True, help="output folder for the synthetic set")
    ap.add_argument("--samples", required=True, help="sample grid PNG")
    args = ap.parse_args()

    cfg = section(load_params(args.params), SynthesisConfig, "synthesis")
    model, ckpt = load_generator(args.generator)
    temperature = cfg.temperature
    dataset = OmniglotSet.load(args.data)
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    # The one-shot training classes: exactly one real exemplar each.
    train_classes = dataset.classes("train")
    exemplars = dataset.images[dataset.exemplar_indices()]
    drawn = synthesize_from_exemplars(model, exemplars, cfg.n_per_exemplar, generator, temperature)

    # Novel classes, for measuring identity and diversity only: one random drawer as exemplar.
    novel = rng.choice(dataset.classes("novel"), size=min(cfg.n_novel_classes, len(dataset.classes("novel"))),
                       replace=False)
    novel_idx = np.array([rng.choice(np.flatnonzero(dataset.labels == c)) for c in novel], dtype=np.int64)
    novel_drawn = synthesize_from_exemplars(model, dataset.images[novel_idx], cfg.n_per_exemplar, generator,
                                            temperature)
    n = cfg.n_per_exemplar
    synthetic = SyntheticSet(
        images=drawn.reshape(-1, *exemplars.shape[1:]),
        labels=np.repeat(train_classes, n),
        generator=ckpt["family"],
        info={"n_per_exemplar": n, "temperature": temperature, "seed": cfg.seed,
              "classes": len(train_classes)},
    )
    with atomic_dir(args.out) as tmp:
        synthetic.save(tmp)
        np.savez_compressed(tmp / "novel.npz", exemplar_index=novel_idx,
                            images=novel_drawn.reshape(-1, *exemplars.shape[1:]), labels=np.repeat(novel, n))

    rows = []
    for kind, classes, ex, syn in (("train", train_classes, exemplars, drawn),
                                   ("novel", novel, dataset.images[novel_idx], novel_drawn)):
        for k in range(min(cfg.grid_rows, len(classes))):
            label = f"{kind}: {dataset.class_alphabet[classes[k]]}"
            rows.append((label, ex[k], syn[k, :cfg.grid_columns]))
    with atomic_path(args.samples) as tmp_png:
        sample_grid(rows).save(tmp_png, format="PNG")
    print(f"synthesized {len(synthetic.images)} drawings for {len(train_classes)} classes -> {args.out}")


if __name__ == "__main__":
    main()
