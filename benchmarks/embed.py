"""Embedding throughput of the Siamese network (what evaluation, the sweeps, calibration and `oneshot-gda`
spend their time on) by batch size, under the bf16 autocast (where the CPU has bf16) + channels_last that
`embed_all` uses, and at batch 64 with the BatchNorms not folded into the convolutions (as before
`network.folded`), alternating with the folded path. Prints images/s, all taken in one run, best of
`--repeats`.

    python benchmarks/embed.py [--images 8192] [--image-size 28] [--repeats 3]
    python benchmarks/embed.py --model build/smoke/models/classifiers/classic \
        --data build/smoke/data/prepared/dataset.npz

A trained network and real drawings (`--model`, `--data`) are what evaluation embeds: the unfolded
BatchNorm pass costs more on them than on a fresh network and random pixels.
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.network import SiameseNet, load_siamese
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor
from pipeline.hardware import bf16_is_fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", help="a trained classifier (folder or file) instead of a fresh network")
    ap.add_argument("--data", help="a prepared dataset.npz: its first --images drawings instead of random pixels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = load_siamese(args.model)[0] if args.model else SiameseNet(args.image_size).eval()
    if args.data:
        images = to_tensor(FewShotSet.load(args.data).images[:args.images])
        args.images = len(images)
    else:
        images = torch.rand(args.images, net.config.get("in_channels", 1), net.image_size, net.image_size)
    embed_all(net, images[:256])  # warm-up: oneDNN picks its kernels
    print(f"{'batch':>6} {'images/s':>9}")
    for batch in (32, 64, 128, 256, 1024):
        best = min(_timed(net, images, batch) for _ in range(args.repeats))
        print(f"{batch:>6} {args.images / best:>9.0f}")
    folded, unfolded = [], []
    for _ in range(args.repeats):  # alternating, so that a noisy neighbour slows both
        folded.append(_timed(net, images, 64))
        unfolded.append(_timed_unfolded(net, images, 64))
    print(f"\nbatch 64, BatchNorm folded (embed_all): {args.images / min(folded):.0f} images/s; "
          f"not folded: {args.images / min(unfolded):.0f} images/s ({min(unfolded) / min(folded):.2f}x)")


@torch.no_grad()
def _timed_unfolded(net: SiameseNet, images: torch.Tensor, batch: int) -> float:
    """`embed_all` as it was before it folded the BatchNorms: the network as trained, one pass per layer."""
    net.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_is_fast(images.device)):
            net.embed(images[i:i + batch]).float()
    return time.perf_counter() - start


def _timed(net: SiameseNet, images: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    embed_all(net, images, batch)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
