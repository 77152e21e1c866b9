"""Embedding throughput of the Siamese network (what evaluation, the sweeps, calibration and `oneshot-gda`
spend their time on) by batch size, under the bf16 autocast + channels_last that `embed_all` uses. Prints
images/s per batch size, all taken in one run, best of `--repeats`.

    python benchmarks/embed.py [--images 8192] [--image-size 28] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.network import SiameseNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = SiameseNet(args.image_size).eval()
    images = torch.rand(args.images, 1, args.image_size, args.image_size)
    embed_all(net, images[:256])  # warm-up: oneDNN picks its kernels
    print(f"{'batch':>6} {'images/s':>9}")
    for batch in (32, 64, 128, 256, 1024):
        best = min(_timed(net, images, batch) for _ in range(args.repeats))
        print(f"{batch:>6} {args.images / best:>9.0f}")


def _timed(net: SiameseNet, images: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    embed_all(net, images, batch)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
