"""What each classifier variant trains on: a list of training sources, with or without the classic transforms.

A source kind gives images to some classes:

- `exemplars`: each one-shot class's single seeded exemplar (what a one-shot method has);
- `synthetic`: a generator's drawings of those exemplars (the generator named by `synthetic`);
- `real`: every real image of each one-shot class, exemplar first (a ceiling: what no one-shot
  method has);
- `source`: every real image of each source class, as classes of their own (the many-example
  classes the generators learn from).

A variant's training set is one image pool per class, the kinds' images of that class joined in
the order of `KINDS`. A variant trains with the `siamese` params, changed for it alone by its own
`siamese` mapping (for example the model a user ships, trained longer than the comparisons): each change
is checked on its own when params load, so a bad key fails before any stage runs, and checked again laid
over the `siamese` params when the variant trains (a change may be valid alone but not with them). No
kind gives images of the `calibration` or `novel` classes: those stay unseen by every classifier.
Adding a kind is one function and one entry of `KINDS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from pipeline.classifiers.config import SiameseConfig
from pipeline.config import _check, from_dict
from pipeline.data.fewshot import FewShotSet
from pipeline.data.synthetic import SyntheticSet


@dataclasses.dataclass(frozen=True)
class VariantConfig:
    OPTIONAL: ClassVar[tuple[str, ...]] = ("classic", "siamese")  # may be left out: on, and no changes

    train_on: tuple[str, ...] = ("exemplars",)  # source kinds (KINDS): exemplars, synthetic, real, source
    synthetic: str = "none"  # the generator whose drawings `synthetic` adds, or "none"
    real_per_class: int | None = None  # `real`: at most this many real images per one-shot class (null: all)
    classic: bool = True  # albumentations' affine transforms on the fly, on every pool
    siamese: dict[str, Any] = dataclasses.field(default_factory=dict)  # `siamese` params changed for this variant

    @property
    def ceiling(self) -> bool:
        """A reference ceiling: it sees real images of the one-shot classes that a one-shot method never has."""
        return "real" in self.train_on

    @property
    def uses_source(self) -> bool:
        return "source" in self.train_on

    def validate(self, key: str) -> None:
        _check(len(self.train_on) > 0 and set(self.train_on) <= set(KINDS)
               and len(set(self.train_on)) == len(self.train_on), f"{key}.train_on", list(self.train_on),
               f"a list of distinct source kinds among {', '.join(KINDS)}")
        _check(not {"exemplars", "real"} <= set(self.train_on), f"{key}.train_on", list(self.train_on),
               "`exemplars` or `real`, not both (`real` already holds each exemplar)")
        _check(("synthetic" in self.train_on) == (self.synthetic != "none"), f"{key}.synthetic", self.synthetic,
               "a generator name exactly when train_on lists `synthetic` (else none)")
        _check(self.real_per_class is None or self.real_per_class >= 1, f"{key}.real_per_class",
               self.real_per_class, "a count >= 1 of real images per one-shot class, or null for all")
        _check(self.real_per_class is None or "real" in self.train_on, f"{key}.real_per_class",
               self.real_per_class, "null unless train_on lists `real`")
        from_dict(SiameseConfig, dict(self.siamese), f"{key}.siamese")  # each change checked at load, on its own

    def training_config(self, cfg: SiameseConfig, key: str) -> SiameseConfig:
        """The `siamese` params `cfg` with this variant's changes laid over, validated (errors name `key`.siamese)."""
        if not self.siamese:
            return cfg
        return from_dict(SiameseConfig, {**dataclasses.asdict(cfg), **self.siamese}, f"{key}.siamese")


@dataclasses.dataclass(frozen=True)
class Sources:
    """What the kinds draw from: the prepared set, the generator's drawings, how many of them per class."""

    dataset: FewShotSet
    synthetic: SyntheticSet
    n_synthetic: int | None
    variant: VariantConfig


def _exemplars(s: Sources) -> dict[int, np.ndarray]:
    d = s.dataset
    return {int(c): d.images[[ex]] for c, ex in zip(d.classes("train"), d.exemplar_indices(), strict=True)}


def _synthetic(s: Sources) -> dict[int, np.ndarray]:
    return {int(c): s.synthetic.for_class(int(c), s.n_synthetic) for c in s.dataset.classes("train")}


def _real(s: Sources) -> dict[int, np.ndarray]:
    d, n = s.dataset, s.variant.real_per_class
    pools = {}
    for c, ex in zip(d.classes("train"), d.exemplar_indices(), strict=True):
        others = np.flatnonzero((d.labels == c) & (np.arange(len(d.labels)) != ex))
        pools[int(c)] = d.images[np.concatenate([[ex], others if n is None else others[: n - 1]])]
    return pools


def _source(s: Sources) -> dict[int, np.ndarray]:
    d = s.dataset
    return {int(c): d.images[np.flatnonzero(d.labels == c)] for c in d.classes("source")}


# Kind -> the images it gives, per class index. The order of this table is the order within a pool.
KINDS: dict[str, Callable[[Sources], dict[int, np.ndarray]]] = {
    "exemplars": _exemplars, "real": _real, "synthetic": _synthetic, "source": _source}


def training_set(dataset: FewShotSet, variant: VariantConfig, synthetic: SyntheticSet,
                 n_synthetic: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """(class indices [K], one uint8 image pool [n_c, C, S, S] per class) of a variant, classes in class order.

    `n_synthetic`: the first this many synthetic drawings of each class (all when None). A class
    without images (a one-shot class the generator drew nothing for, with `synthetic` alone) is left out.
    """
    if "synthetic" in variant.train_on and synthetic.generator != variant.synthetic:
        raise ValueError(f"the synthetic set holds drawings of {synthetic.generator!r}, but the variant trains "
                         f"on {variant.synthetic!r}'s")
    sources = Sources(dataset, synthetic, n_synthetic, variant)
    parts: dict[int, list[np.ndarray]] = {}
    for kind in KINDS:
        if kind in variant.train_on:
            for c, images in KINDS[kind](sources).items():
                parts.setdefault(c, []).append(images)
    classes = np.array(sorted(c for c, p in parts.items() if sum(len(x) for x in p)), dtype=np.int64)
    unseen = np.isin(dataset.class_role[classes], ("calibration", "novel"))
    assert not unseen.any(), f"a training source gave images of held-out classes {classes[unseen]}"
    return classes, [np.concatenate(parts[int(c)]) for c in classes]


def training_pools(dataset: FewShotSet, variant: VariantConfig, synthetic: SyntheticSet,
                   n_synthetic: int | None = None) -> list[np.ndarray]:
    """The pools of `training_set`, without the class indices."""
    return training_set(dataset, variant, synthetic, n_synthetic)[1]


def source_pools(dataset: FewShotSet) -> list[np.ndarray]:
    """Every real image of each source class, one pool per class: the reference embedding's data."""
    none = SyntheticSet(images=dataset.images[:0], labels=dataset.labels[:0], generator="none")
    return training_pools(dataset, VariantConfig(train_on=("source",)), none)
