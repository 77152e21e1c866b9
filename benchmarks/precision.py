"""Training-step throughput of the Siamese network, the VAE and the GAN: fp32 vs bf16 autocast, with
and without channels_last. Prints images/s and the ratio to fp32, all taken in one run. The networks
follow the data: --image-size and --channels time them for other images than Omniglot's 1 x 28 x 28.

    python benchmarks/precision.py [--steps 20] [--image-size 28] [--channels 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pipeline.classifiers.network import SiameseNet
from pipeline.generators import gan
from pipeline.generators.blocks import multiscale_error
from pipeline.generators.module import GANModule
from pipeline.generators.vae import VAEConfig, build


def siamese_step(net: SiameseNet, x: torch.Tensor) -> torch.Tensor:
    e = net.embed(x)
    return (e[: len(e) // 2] * e[len(e) // 2:]).sum()


def vae_step(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    a, b = x[: len(x) // 2], x[len(x) // 2:]
    recon, mean, _ = model(a, b)
    return multiscale_error(recon, b.float(), (1, 2, 4)) + mean.pow(2).sum()


def gan_step(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The work of one GAN batch (critic on real and generated pairs, generator through the critic) as one loss."""
    a, b = x[: len(x) // 2], x[len(x) // 2:]
    fake = module.model(a, torch.randn(len(a), module.cfg.noise_dim))
    critic = module.critic
    loss_d = F.relu(1 - critic(a, b)).mean() + F.relu(1 + critic(a, fake.detach())).mean()
    return loss_d - critic(a, fake).mean()


def measure(make, step, batch: int, steps: int, bf16: bool, channels_last: bool, image_size: int,
            channels: int) -> float:
    torch.manual_seed(0)
    model = make()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, channels, image_size, image_size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=28, help="side S of the square images (default 28)")
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 grayscale, 3 RGB (default 1)")
    args = ap.parse_args()
    size, channels = args.image_size, args.channels
    cases = {
        "siamese (batch 128)": (lambda: SiameseNet(size, in_channels=channels), siamese_step, 128),
        "vae (64 pairs)": (lambda: build(VAEConfig(), size, channels), vae_step, 128),
        "gan (64 pairs)": (lambda: GANModule(gan.build(gan.GANConfig(), size, channels), gan.GANConfig()),
                           gan_step, 128),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; images {channels} x {size} x {size}")
    print(f"{'model':<22}{'precision':<10}{'layout':<15}{'images/s':>10}{'vs fp32':>9}")
    for name, (make, step, batch) in cases.items():
        base = None
        for bf16 in (False, True):
            for cl in (False, True):
                ips = measure(make, step, batch, args.steps, bf16, cl, size, channels)
                base = base or ips
                print(f"{name:<22}{'bf16' if bf16 else 'fp32':<10}{'channels_last' if cl else 'contiguous':<15}"
                      f"{ips:>10.0f}{ips / base:>8.2f}x")


if __name__ == "__main__":
    main()
