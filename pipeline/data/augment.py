"""The classic augmentation: Koch et al. (2015)-style affine distortions, plus optional elastic ones."""

from __future__ import annotations

import dataclasses

import albumentations as A
import cv2

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

    def validate(self, key: str) -> None:
        non_negative(key, rotate=self.rotate, shear=self.shear, translate=self.translate,
                     elastic_alpha=self.elastic_alpha, elastic_sigma=self.elastic_sigma)
        _check(0 <= self.scale < 1, f"{key}.scale", self.scale, "0 <= scale < 1")
        _check(0 <= self.elastic_p <= 1, f"{key}.elastic_p", self.elastic_p, "a probability in 0..1")


def classic_transform(cfg: ClassicAugmentConfig, seed: int) -> A.Compose:
    """A seeded albumentations pipeline for uint8 [S, S] or [S, S, C] images (the foreground on a 0 background).

    `batches.apply_transform` applies it to the pipeline's [C, S, S] images.
    """
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
