"""Stage `prepare`: find (or download) the Omniglot zips, decode every drawing once, split by alphabet."""

from __future__ import annotations

import argparse

import numpy as np

from pipeline.config import DataConfig, load_params, section
from pipeline.data import locate_zips, prepare_omniglot
from pipeline.io import atomic_dir, write_json
from pipeline.synthetic import SyntheticSet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="folder for omniglot.npz and manifest.json")
    ap.add_argument("--no-synthetic", required=True, help="folder for the empty synthetic set (real-only variants)")
    args = ap.parse_args()

    cfg = section(load_params(args.params), DataConfig, "data")
    dataset, manifest = prepare_omniglot(locate_zips(cfg), cfg)
    with atomic_dir(args.out) as tmp:
        dataset.save(tmp / "omniglot.npz")
        write_json(tmp / "manifest.json", manifest)
    empty = SyntheticSet(images=np.zeros((0, cfg.image_size, cfg.image_size), np.uint8),
                         labels=np.zeros(0, np.int64), generator="none")
    with atomic_dir(args.no_synthetic) as tmp:
        empty.save(tmp)
    print(f"prepared {manifest['images']} images of {manifest['classes']} classes into {args.out}")


if __name__ == "__main__":
    main()
