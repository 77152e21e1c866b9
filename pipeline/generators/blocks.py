"""Building blocks shared by the generators, on top of diffusers' VAE encoder and ResNet blocks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Encoder
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


def conv_encoder(in_channels: int, out_channels: int, widths: tuple[int, ...], double_z: bool) -> Encoder:
    """diffusers' VAE encoder, down-sampling 2x between blocks: [B, in, S, S] -> [B, out(x2), S/2^(k-1), ...]."""
    return Encoder(
        in_channels=in_channels,
        out_channels=out_channels,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=1,
        norm_num_groups=min(8, widths[0]),
        double_z=double_z,
        mid_block_add_attention=False,
    )


def _scale_terms(output: torch.Tensor, target: torch.Tensor,
                 scales: tuple[int, ...]) -> Iterator[tuple[int, torch.Tensor]]:
    """(pooling factor, squared error summed over that scale's pixels per drawing [B]) for each scale."""
    for s in scales:
        a, b = (F.avg_pool2d(output, s), F.avg_pool2d(target, s)) if s > 1 else (output, target)
        yield s, (a - b).pow(2).sum(dim=(1, 2, 3))


def multiscale_errors(output: torch.Tensor, target: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """Squared error summed over pixels at several poolings, per drawing: [B].

    Coarse scales give a gradient even where strokes do not overlap yet; each scale is weighted
    by its pooling area so that all count about equally.
    """
    return sum((term * s * s for s, term in _scale_terms(output, target, scales)), output.new_zeros(len(output)))


def multiscale_error(output: torch.Tensor, target: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """`multiscale_errors`, mean over the batch (each scale's mean summed: the VAE's loss, kept bit for bit)."""
    return sum((term.mean() * s * s for s, term in _scale_terms(output, target, scales)), output.new_zeros(()))


class FiLMResnet(nn.Module):
    """diffusers ResNet blocks whose features are scaled and shifted by a vector (here a latent code)."""

    def __init__(self, channels: int, cond_dim: int, n_blocks: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResnetBlock2D(in_channels=channels, out_channels=channels, temb_channels=cond_dim,
                          groups=min(8, channels), time_embedding_norm="scale_shift")
            for _ in range(n_blocks)
        )

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, cond)
        return h


def identity_grid(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """Sampling grid [B, S, S, 2] of `F.grid_sample` that leaves an image unchanged."""
    theta = torch.eye(2, 3, device=device).expand(batch, 2, 3)
    return torch.nn.functional.affine_grid(theta, [batch, 1, size, size], align_corners=False)
