"""What each classifier variant trains on: real images per class, classic transforms, synthetic drawings."""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.classifiers.module import SiameseConfig
from pipeline.classifiers.network import SiameseNet
from pipeline.classifiers.training import fit_siamese
from pipeline.config import TrainerConfig, _check
from pipeline.data.augment import ClassicAugmentConfig, classic_transform
from pipeline.data.fewshot import FewShotSet
from pipeline.data.synthetic import SyntheticSet


@dataclasses.dataclass(frozen=True)
class VariantConfig:
    real_per_class: int = 1  # 1 = one-shot (the seeded exemplar); more: the exemplar and further real images (oracle)
    classic: bool = True  # albumentations' affine transforms on the fly
    synthetic: str = "none"  # generator whose synthetic drawings are added, or "none"
    ceiling: bool = False  # a reference ceiling (sees real drawings a one-shot method never has)

    def validate(self, key: str) -> None:
        _check(self.real_per_class >= 1, f"{key}.real_per_class", self.real_per_class,
               "a count >= 1 of real images per class (a class with fewer gives all it has)")


def training_pools(dataset: FewShotSet, variant: VariantConfig, synthetic: SyntheticSet,
                   n_synthetic: int | None = None) -> list[np.ndarray]:
    """One uint8 image array [n_c, C, S, S] per one-shot training class: its real images plus its synthetic ones.

    The exemplar always comes first; further real images (oracle) follow in image order, then
    the first `n_synthetic` synthetic drawings of the class (all when None).
    """
    pools = []
    for c, ex in zip(dataset.classes("train"), dataset.exemplar_indices(), strict=True):
        others = np.flatnonzero((dataset.labels == c) & (np.arange(len(dataset.labels)) != ex))
        real = np.concatenate([[ex], others[: variant.real_per_class - 1]])
        pools.append(np.concatenate([dataset.images[real], synthetic.for_class(int(c), n_synthetic)]))
    return pools


def source_pools(dataset: FewShotSet) -> list[np.ndarray]:
    """Every real image of each source class, one uint8 array [n_c, C, S, S] per class (the reference's data)."""
    return [dataset.images[np.flatnonzero(dataset.labels == c)] for c in dataset.classes("source")]


def fit_generator_variant(dataset: FewShotSet, synthetic: SyntheticSet, n_synthetic: int, cfg: SiameseConfig,
                          trainer_cfg: TrainerConfig, augment: ClassicAugmentConfig) -> SiameseNet:
    """A generator variant's classifier without logging: each exemplar plus its first `n_synthetic`
    synthetic drawings, classic transforms on top, every other setting as the variants'. What the
    sweep and benchmarks/seeds.py train for each of their points."""
    variant = VariantConfig(real_per_class=1, classic=True, synthetic=synthetic.generator)
    pools = training_pools(dataset, variant, synthetic, n_synthetic=n_synthetic)
    return fit_siamese(pools, cfg, trainer_cfg, [], transform=classic_transform(augment, cfg.seed))
