"""Stage `prepare`: load the dataset that `data.source` names, decode every image once, assign roles and exemplars."""

from __future__ import annotations

import argparse

import numpy as np

from pipeline.config import load_params, section
from pipeline.data.prepare import DataConfig, prepare_dataset
from pipeline.data.synthetic import SyntheticSet
from pipeline.io import atomic_dir, write_json
from pipeline.lifecycle import guard_stage


def main() -> None:
    guard_stage()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="folder for dataset.npz and manifest.json")
    ap.add_argument("--no-synthetic", required=True, help="folder for the empty synthetic set (real-only variants)")
    args = ap.parse_args()

    cfg = section(load_params(args.params), DataConfig, "data")
    dataset, manifest = prepare_dataset(cfg)
    with atomic_dir(args.out) as tmp:
        dataset.save(tmp / "dataset.npz")
        write_json(tmp / "manifest.json", manifest)
    empty = SyntheticSet(images=np.zeros((0, dataset.channels, dataset.image_size, dataset.image_size), np.uint8),
                         labels=np.zeros(0, np.int64), generator="none")
    with atomic_dir(args.no_synthetic) as tmp:
        empty.save(tmp)
    roles = ", ".join(f"{r} {v['classes']} classes / {v['images']} images" for r, v in manifest["roles"].items())
    print(f"prepared {cfg.source} ({dataset.channels} x {dataset.image_size} x {dataset.image_size}): {roles} "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
