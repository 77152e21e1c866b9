"""What each classifier variant trains on: the exemplar, further real images, synthetic drawings."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ParamsError, from_dict
from pipeline.data.fewshot import FewShotSet
from pipeline.data.synthetic import SyntheticSet
from pipeline.variants import VariantConfig, source_pools, training_pools
from tests.drawings import DRAWERS, coded_dataset

ROLES = np.array(["source", "train", "novel", "train", "train", "source"])
EXEMPLAR_DRAWER = np.array([-1, 7, -1, 0, 19, -1])  # classes 1, 3, 4 are the one-shot training classes
TRAIN = [1, 3, 4]
SIZE = 4


@pytest.fixture
def dataset() -> FewShotSet:
    return coded_dataset(ROLES, EXEMPLAR_DRAWER, SIZE)


def empty_synthetic() -> SyntheticSet:
    return SyntheticSet(images=np.empty((0, 1, SIZE, SIZE), np.uint8), labels=np.empty(0, np.int64), generator="none")


def synthetic_set() -> SyntheticSet:
    """Synthetic drawings valued 200 + k: three of class 1, two of class 4, one of source class 0 (never used)."""
    labels = np.array([1, 4, 1, 0, 4, 1])
    images = np.stack([np.full((1, SIZE, SIZE), 200 + k, np.uint8) for k in range(len(labels))])
    return SyntheticSet(images=images, labels=labels, generator="vae")


def values(pool: np.ndarray) -> list[int]:
    """The code of each image [n, 1, S, S] in a pool (each image is constant)."""
    assert pool.ndim == 4 and pool.shape[1] == 1
    assert (pool == pool[:, :, :1, :1]).all()
    return pool[:, 0, 0, 0].astype(int).tolist()


def test_one_shot_pools_hold_only_the_exemplar(dataset: FewShotSet) -> None:
    pools = training_pools(dataset, VariantConfig(real_per_class=1), empty_synthetic())
    assert len(pools) == len(TRAIN)
    for c, pool in zip(TRAIN, pools, strict=True):
        assert pool.shape == (1, 1, SIZE, SIZE) and pool.dtype == np.uint8
        (index,) = values(pool)
        assert dataset.labels[index] == c
        assert dataset.instances[index] == EXEMPLAR_DRAWER[c]


def test_oracle_pools_hold_every_drawing_exemplar_first(dataset: FewShotSet) -> None:
    pools = training_pools(dataset, VariantConfig(real_per_class=DRAWERS), empty_synthetic())
    for c, pool in zip(TRAIN, pools, strict=True):
        indices = values(pool)
        assert len(indices) == DRAWERS
        assert sorted(indices) == list(range(c * DRAWERS, (c + 1) * DRAWERS))
        assert dataset.instances[indices[0]] == EXEMPLAR_DRAWER[c]
        rest = dataset.instances[indices[1:]]
        assert (np.diff(rest) > 0).all(), "the other drawings follow in drawer order"


def test_some_real_drawings_are_the_exemplar_then_the_first_drawers(dataset: FewShotSet) -> None:
    pools = training_pools(dataset, VariantConfig(real_per_class=4), empty_synthetic())
    drawers = [dataset.instances[values(pool)].tolist() for pool in pools]
    assert drawers == [[7, 0, 1, 2], [0, 1, 2, 3], [19, 0, 1, 2]]
    for c, pool in zip(TRAIN, pools, strict=True):
        assert (dataset.labels[values(pool)] == c).all()


@pytest.mark.parametrize("real_per_class", [1, DRAWERS])
def test_synthetic_drawings_are_appended_to_their_class(dataset: FewShotSet, real_per_class: int) -> None:
    pools = training_pools(dataset, VariantConfig(real_per_class=real_per_class, synthetic="vae"), synthetic_set())
    plain = training_pools(dataset, VariantConfig(real_per_class=real_per_class), empty_synthetic())
    expected_synthetic = {1: [200, 202, 205], 3: [], 4: [201, 204]}
    for c, pool, real in zip(TRAIN, pools, plain, strict=True):
        codes = values(pool)
        assert codes[:real_per_class] == values(real)
        assert codes[real_per_class:] == expected_synthetic[c]


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("real_per_class", [1, 5, DRAWERS, DRAWERS + 1, 500])
def test_config_accepts_any_count_of_real_images_from_1(real_per_class: int) -> None:
    cfg = from_dict(VariantConfig, {"real_per_class": real_per_class, "synthetic": "vae"}, "variants.oracle")
    assert cfg.real_per_class == real_per_class and cfg.synthetic == "vae"


@pytest.mark.parametrize("real_per_class", [0, -1])
def test_config_rejects_real_images_below_1(real_per_class: int) -> None:
    with pytest.raises(ParamsError, match=rf"`variants\.oracle\.real_per_class` = {real_per_class} .*>= 1"):
        from_dict(VariantConfig, {"real_per_class": real_per_class}, "variants.oracle")


def test_more_real_images_than_a_class_has_gives_all_it_has(dataset: FewShotSet) -> None:
    pools = training_pools(dataset, VariantConfig(real_per_class=DRAWERS + 5), empty_synthetic())
    for c, pool in zip(TRAIN, pools, strict=True):
        assert sorted(values(pool)) == list(range(c * DRAWERS, (c + 1) * DRAWERS))


def test_source_pools_hold_every_image_of_each_source_class(dataset: FewShotSet) -> None:
    pools = source_pools(dataset)
    assert len(pools) == 2  # classes 0 and 5
    for c, pool in zip([0, 5], pools, strict=True):
        assert pool.shape == (DRAWERS, 1, SIZE, SIZE)
        assert values(pool) == list(range(c * DRAWERS, (c + 1) * DRAWERS))


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ParamsError, match=r"unknown key `variants\.vae\.synthetics`"):
        from_dict(VariantConfig, {"synthetics": "vae"}, "variants.vae")
