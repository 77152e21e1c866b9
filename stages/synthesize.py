"""Stage `synthesize@<name>`: synthetic drawings from each one-shot exemplar and from novel-class exemplars.

Training classes get as many drawings as the largest of `synthesis.n_per_exemplar` and
`sweep.counts`; a variant takes the first n of each class, so the sweep's sets are nested.
Novel classes (never trained on) get `n_per_exemplar` each, for the synthetic-data measures
and the synthetic-support prototypes of the evaluation.
"""

from __future__ import annotations

import argparse

from pipeline.config import load_params, section
from pipeline.data.fewshot import FewShotSet
from pipeline.generators import load_generator
from pipeline.generators.synthesis import SweepConfig, SynthesisConfig, sample_grid, synthesize
from pipeline.io import atomic_dir, atomic_path, write_npz
from pipeline.lifecycle import guard_stage


def main() -> None:
    guard_stage()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--generator", required=True, help="generator checkpoint (its folder or model.safetensors)")
    ap.add_argument("--data", required=True, help="prepared dataset.npz")
    ap.add_argument("--out", required=True, help="output folder for the synthetic set")
    ap.add_argument("--samples", required=True, help="sample grid PNG")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = section(params, SynthesisConfig, "synthesis")
    sweep = section(params, SweepConfig, "sweep")
    model, extra = load_generator(args.generator)
    dataset = FewShotSet.load(args.data)
    result = synthesize(model, extra["family"], dataset, cfg, sweep.drawn_per_exemplar(cfg.n_per_exemplar))
    with atomic_dir(args.out) as tmp:
        result.train.save(tmp)
        write_npz(tmp / "novel.npz", exemplar_index=result.novel_exemplars, images=result.novel_images,
                  labels=result.novel_labels)
    with atomic_path(args.samples) as tmp_png:
        sample_grid(result.grid_rows(dataset, cfg), inverted=dataset.inverted).save(tmp_png, format="PNG")
    print(f"synthesized {len(result.train.images)} drawings for {result.train.info['classes']} training classes and "
          f"{len(result.novel_images)} for {len(result.novel_exemplars)} novel classes -> {args.out}")


if __name__ == "__main__":
    main()
