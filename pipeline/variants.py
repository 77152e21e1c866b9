"""What each classifier variant trains on: real drawings per class, classic transforms, synthetic drawings."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.augment import ClassicAugmentConfig, classic_transform
from pipeline.config import TrainerConfig, _check
from pipeline.data import DRAWERS, OmniglotSet
from pipeline.synthetic import SyntheticSet
from pipeline.training import fit_siamese


@dataclasses.dataclass(frozen=True)
class VariantConfig:
    real_per_class: int = 1  # 1 = one-shot (the seeded exemplar); 20 = every real drawing (the oracle)
    classic: bool = True  # albumentations' affine transforms on the fly
    synthetic: str = "none"  # generator whose synthetic drawings are added, or "none"
    ceiling: bool = False  # a reference ceiling (sees real drawings a one-shot method never has)

    def validate(self, key: str) -> None:
        _check(1 <= self.real_per_class <= DRAWERS, f"{key}.real_per_class", self.real_per_class,
               f"1..{DRAWERS} real drawings per class")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Accuracy against the number of synthetic drawings per exemplar, for each generator."""

    counts: tuple[int, ...] = (0, 5, 10, 20, 50)

    def validate(self, key: str) -> None:
        _check(len(self.counts) > 0 and all(n >= 0 for n in self.counts)
               and list(self.counts) == sorted(set(self.counts)), f"{key}.counts", self.counts,
               "a non-empty increasing list of counts >= 0")

    def drawn_per_exemplar(self, n_per_exemplar: int) -> int:
        """Synthetic drawings made per training exemplar: enough for the variants and every sweep point."""
        return max(n_per_exemplar, *self.counts)


def training_pools(dataset: OmniglotSet, variant: VariantConfig, synthetic: SyntheticSet,
                   n_synthetic: int | None = None) -> list[np.ndarray]:
    """One uint8 image array per one-shot training class: its real drawings plus its synthetic ones.

    The exemplar always comes first; further real drawings (oracle) follow in drawer order, then
    the first `n_synthetic` synthetic drawings of the class (all when None).
    """
    pools = []
    for c, ex in zip(dataset.classes("train"), dataset.exemplar_indices(), strict=True):
        others = np.flatnonzero((dataset.labels == c) & (np.arange(len(dataset.labels)) != ex))
        real = np.concatenate([[ex], others[: variant.real_per_class - 1]])
        pools.append(np.concatenate([dataset.images[real], synthetic.for_class(int(c), n_synthetic)]))
    return pools


def fit_generator_variant(dataset: OmniglotSet, synthetic: SyntheticSet, n_synthetic: int, cfg: Any,
                          trainer_cfg: TrainerConfig, augment: ClassicAugmentConfig) -> Any:
    """A generator variant's classifier without logging: each exemplar plus its first `n_synthetic`
    synthetic drawings, classic transforms on top, every other setting as the variants' (`cfg`:
    `SiameseConfig`). What the sweep and benchmarks/seeds.py train for each of their points."""
    variant = VariantConfig(real_per_class=1, classic=True, synthetic=synthetic.generator)
    pools = training_pools(dataset, variant, synthetic, n_synthetic=n_synthetic)
    return fit_siamese(pools, cfg, trainer_cfg, [], transform=classic_transform(augment, cfg.seed))
