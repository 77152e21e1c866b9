"""What this machine's hardware does fast: the one place that decides between bf16 and fp32.

bf16 autocast pays only where the hardware computes in bf16: a CUDA GPU that supports it, or a CPU with
AVX-512 BF16 or AMX (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later). Elsewhere oneDNN
emulates it and it is far slower than fp32: on an AVX2-only AMD Zen 3, 0.16-0.18x of fp32 for the Siamese
network and the VAE (`python benchmarks/precision.py`). Params say `precision: auto` to get whichever is fast here.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_has_bf16() -> bool:
    """True where the CPU computes in bf16 natively (AVX-512 BF16 or AMX tiles)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 autocast speeds up `device` rather than slowing it down."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def resolve_precision(precision: str, accelerator: str = "cpu") -> str:
    """Lightning's precision for params' `precision`: `auto` is bf16-mixed where bf16 is fast on the
    accelerator the Trainer will use, 32-true elsewhere; any other value is passed as it is."""
    if precision != "auto":
        return precision
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if bf16_is_fast("cuda" if gpu else "cpu") else "32-true"
