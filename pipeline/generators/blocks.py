"""Building blocks shared by the generators, on top of diffusers' VAE encoder and ResNet blocks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
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


class SameClassPairs(torch.utils.data.IterableDataset):
    """Endless batches of (exemplar, targets): drawings of one class by different drawers.

    images: uint8 [N, S, S] (strokes 255); labels: [N]. Yields float [B, 1, S, S] exemplars and
    [B, targets, S, S] other drawings of each exemplar's class (one per channel).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, targets: int = 1):
        super().__init__()
        classes, inverse = np.unique(labels, return_inverse=True)
        self.by_class = [np.flatnonzero(inverse == k) for k in range(len(classes))]
        if any(len(ix) < 1 + targets for ix in self.by_class):
            raise ValueError(f"every source class needs at least {1 + targets} drawings to give an exemplar "
                             f"{targets} other drawing(s) of its class")
        self.images = images
        self.batch_size = batch_size
        self.seed = seed
        self.targets = targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id])
        while True:
            classes = rng.integers(len(self.by_class), size=self.batch_size)
            drawn = np.array([rng.choice(self.by_class[c], size=1 + self.targets, replace=False) for c in classes])
            x = torch.from_numpy(self.images[drawn]).float().div_(255.0)  # [B, 1 + targets, S, S]
            yield x[:, :1], x[:, 1:]
