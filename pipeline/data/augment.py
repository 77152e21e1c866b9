"""The classic augmentation: Koch et al. (2015)-style affine distortions, plus optional elastic ones.

Two engines draw the same distribution of affine transforms (`augment.engine`):
- `tensor` (default): `BatchAffine`, a whole training batch at once on tensors, one matrix per
  image, one `grid_sample` for all: 0.5 ms for a batch of 128 drawings on 2 cores;
- `albumentations`: `A.Affine` image by image on uint8 arrays as the batch is built (7 ms for 128),
  and the only engine with the elastic distortions (`elastic_p` > 0).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

from pipeline.config import _check, non_negative


@dataclasses.dataclass(frozen=True)
class ClassicAugmentConfig:
    rotate: float = 10.0  # degrees, +/-
    shear: float = 15.0  # degrees, +/-
    scale: float = 0.15  # relative, 1 +/- scale
    translate: float = 0.1  # fraction of the image side, +/-
    elastic_p: float = 0.0  # probability of an elastic distortion on top
    elastic_alpha: float = 8.0
    elastic_sigma: float = 3.0
    engine: Literal["tensor", "albumentations"] = "tensor"  # see the module's docstring

    def validate(self, key: str) -> None:
        non_negative(key, rotate=self.rotate, shear=self.shear, translate=self.translate,
                     elastic_alpha=self.elastic_alpha, elastic_sigma=self.elastic_sigma)
        _check(0 <= self.scale < 1, f"{key}.scale", self.scale, "0 <= scale < 1")
        _check(0 <= self.elastic_p <= 1, f"{key}.elastic_p", self.elastic_p, "a probability in 0..1")
        _check(self.elastic_p == 0 or self.engine == "albumentations", f"{key}.engine", self.engine,
               f"'albumentations' when {key}.elastic_p > 0 (the tensor engine has no elastic distortions)")


class BatchAffine:
    """`A.Affine(rotate=±r, shear=±s, scale=1±c, translate_percent=±t, fill 0)` for a whole batch at once.

    Each image gets its own draw from the distribution albumentations 2 draws from: rotation, x and y
    shear, x and y scale and x and y translation each uniform and independent, the translation
    truncated to whole pixels; the matrix is albumentations' (about the pixel grid's centre), and the
    image is resampled bilinearly with a zero border as `cv2.warpAffine` does. `batch` takes float
    images [B, C, H, W] and returns them transformed; the draws come from a generator seeded by `seed`.
    """

    def __init__(self, cfg: ClassicAugmentConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self, rank: int = 0) -> None:
        """Back to the first draw: each training run that uses this transform replays the same draws. In a
        distributed run each process (`rank`) draws its own; rank 0 those of a single process."""
        self.generator.manual_seed(self.seed + 1_000_003 * rank)

    def matrices(self, n: int, height: int, width: int) -> torch.Tensor:
        """[n, 3, 3] float64: albumentations' forward matrices (input pixel -> output pixel), one per image."""
        c = self.cfg
        u = torch.rand(n, 7, generator=self.generator, dtype=torch.float64) * 2 - 1  # each uniform in -1..1
        rotate, shear_x, shear_y = (u[:, 0] * math.radians(c.rotate), u[:, 1] * math.radians(c.shear),
                                    u[:, 2] * math.radians(c.shear))
        scale_x, scale_y = 1 + u[:, 3] * c.scale, 1 + u[:, 4] * c.scale
        shift_x, shift_y = torch.trunc(u[:, 5] * c.translate * width), torch.trunc(u[:, 6] * c.translate * height)
        cos, sin = torch.cos(rotate), torch.sin(rotate)
        tx, ty = torch.tan(shear_x), torch.tan(shear_y)
        # shear @ rotate @ scale, as albumentations composes them
        a = torch.stack([torch.stack([(cos - tx * sin) * scale_x, (sin + tx * cos) * scale_y], -1),
                         torch.stack([(ty * cos - sin) * scale_x, (ty * sin + cos) * scale_y], -1)], -2)
        centre = torch.tensor([width / 2 - 0.5, height / 2 - 0.5], dtype=torch.float64)
        out = torch.zeros(n, 3, 3, dtype=torch.float64)
        out[:, :2, :2] = a
        out[:, :2, 2] = centre + torch.stack([shift_x, shift_y], -1) - a @ centre
        out[:, 2, 2] = 1
        return out

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        return warp_affine(images, self.matrices(n, height, width))


def warp_affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """`cv2.warpAffine` (bilinear, zero border) of each float image [B, C, H, W] by its matrix [B, 3, 3]
    (input pixel -> output pixel, pixel centres at whole coordinates), for the whole batch at once."""
    _, _, height, width = images.shape
    inverse = torch.linalg.inv(matrices.double())  # output pixel -> input pixel
    # grid_sample's coordinates: -1..1 from the first pixel's centre to the last's (align_corners)
    to_unit = torch.tensor([[2 / (width - 1), 0, -1], [0, 2 / (height - 1), -1], [0, 0, 1]], dtype=torch.float64)
    theta = (to_unit @ inverse @ torch.linalg.inv(to_unit))[:, :2].to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def classic_transform(cfg: ClassicAugmentConfig, seed: int) -> BatchAffine | A.Compose:
    """The classic transforms of `cfg.engine`, seeded: a `BatchAffine` for float batches, or an
    albumentations pipeline for uint8 [S, S] or [S, S, C] images (the foreground on a 0 background),
    which `batches.apply_transform` applies to the pipeline's [C, S, S] images."""
    if cfg.engine == "tensor":
        return BatchAffine(cfg, seed)
    transforms: list[A.BasicTransform] = [
        A.Affine(
            rotate=(-cfg.rotate, cfg.rotate),
            shear=(-cfg.shear, cfg.shear),
            scale=(1 - cfg.scale, 1 + cfg.scale),
            translate_percent=(-cfg.translate, cfg.translate),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=1.0,
        )
    ]
    if cfg.elastic_p > 0:
        transforms.append(A.ElasticTransform(alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma, p=cfg.elastic_p))
    return A.Compose(transforms, seed=seed)
