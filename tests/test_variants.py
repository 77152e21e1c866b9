"""What each classifier variant trains on: lists of training sources over hand-made pools whose contents are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import ParamsError, from_dict
from pipeline.data.fewshot import FewShotSet
from pipeline.data.synthetic import SyntheticSet
from pipeline.variants import KINDS, VariantConfig, source_pools, training_pools, training_set
from tests.drawings import DRAWERS, coded_dataset

ROLES = np.array(["source", "train", "novel", "train", "train", "source", "calibration"])
EXEMPLAR_DRAWER = np.array([-1, 7, -1, 0, 19, -1, -1])  # classes 1, 3, 4 are the one-shot training classes
TRAIN = [1, 3, 4]
SOURCE = [0, 5]
SIZE = 4


@pytest.fixture
def dataset() -> FewShotSet:
    return coded_dataset(ROLES, EXEMPLAR_DRAWER, SIZE)


def empty_synthetic() -> SyntheticSet:
    return SyntheticSet(images=np.empty((0, 1, SIZE, SIZE), np.uint8), labels=np.empty(0, np.int64), generator="none")


def synthetic_set() -> SyntheticSet:
    """Synthetic drawings valued 200 + k: three of class 1, two of class 4, one of source class 0 and one of
    calibration class 6 (neither ever used)."""
    labels = np.array([1, 4, 1, 0, 4, 1, 6])
    images = np.stack([np.full((1, SIZE, SIZE), 200 + k, np.uint8) for k in range(len(labels))])
    return SyntheticSet(images=images, labels=labels, generator="vae")


def values(pool: np.ndarray) -> list[int]:
    """The code of each image [n, 1, S, S] in a pool (each image is constant)."""
    assert pool.ndim == 4 and pool.shape[1] == 1
    assert (pool == pool[:, :, :1, :1]).all()
    return pool[:, 0, 0, 0].astype(int).tolist()


EXEMPLARS = VariantConfig(train_on=("exemplars",))
REAL = VariantConfig(train_on=("real",))


def all_of(c: int) -> list[int]:
    return list(range(c * DRAWERS, (c + 1) * DRAWERS))


def test_one_shot_pools_hold_only_the_exemplar(dataset: FewShotSet) -> None:
    classes, pools = training_set(dataset, EXEMPLARS, empty_synthetic())
    assert classes.tolist() == TRAIN
    for c, pool in zip(TRAIN, pools, strict=True):
        assert pool.shape == (1, 1, SIZE, SIZE) and pool.dtype == np.uint8
        (index,) = values(pool)
        assert dataset.labels[index] == c
        assert dataset.instances[index] == EXEMPLAR_DRAWER[c]


def test_real_pools_hold_every_drawing_exemplar_first(dataset: FewShotSet) -> None:
    for c, pool in zip(TRAIN, training_pools(dataset, REAL, empty_synthetic()), strict=True):
        indices = values(pool)
        assert sorted(indices) == all_of(c)
        assert dataset.instances[indices[0]] == EXEMPLAR_DRAWER[c]
        assert (np.diff(dataset.instances[indices[1:]]) > 0).all(), "the other drawings follow in drawer order"


def test_some_real_drawings_are_the_exemplar_then_the_first_drawers(dataset: FewShotSet) -> None:
    pools = training_pools(dataset, VariantConfig(train_on=("real",), real_per_class=4), empty_synthetic())
    assert [dataset.instances[values(pool)].tolist() for pool in pools] == [[7, 0, 1, 2], [0, 1, 2, 3], [19, 0, 1, 2]]


def test_more_real_images_than_a_class_has_gives_all_it_has(dataset: FewShotSet) -> None:
    pools = training_pools(dataset, VariantConfig(train_on=("real",), real_per_class=DRAWERS + 5), empty_synthetic())
    assert [sorted(values(p)) for p in pools] == [all_of(c) for c in TRAIN]


@pytest.mark.parametrize("first", ["exemplars", "real"])
def test_synthetic_drawings_follow_the_real_images_of_their_class(dataset: FewShotSet, first: str) -> None:
    variant = VariantConfig(train_on=(first, "synthetic"), synthetic="vae")
    plain = training_pools(dataset, VariantConfig(train_on=(first,)), empty_synthetic())
    classes, pools = training_set(dataset, variant, synthetic_set())
    assert classes.tolist() == TRAIN  # the drawings of source class 0 and calibration class 6 are not used
    expected = {1: [200, 202, 205], 3: [], 4: [201, 204]}
    for c, pool, real in zip(TRAIN, pools, plain, strict=True):
        assert values(pool) == values(real) + expected[c]


def test_the_first_n_synthetic_drawings_per_class(dataset: FewShotSet) -> None:
    variant = VariantConfig(train_on=("exemplars", "synthetic"), synthetic="vae")
    labels = np.array([1, 3, 4, 1, 3, 4, 1])  # three drawings of class 1, two of classes 3 and 4
    drawn = SyntheticSet(np.stack([np.full((1, SIZE, SIZE), 200 + k, np.uint8) for k in range(7)]), labels, "vae")
    pools = training_pools(dataset, variant, drawn, n_synthetic=2)
    assert [values(p)[1:] for p in pools] == [[200, 203], [201, 204], [202, 205]]
    with pytest.raises(ValueError, match=r"3 synthetic drawings of class 3 were asked for, the 'vae' set holds 2"):
        training_pools(dataset, variant, drawn, n_synthetic=3)


def test_synthetic_alone_leaves_out_a_class_with_no_drawings(dataset: FewShotSet) -> None:
    classes, pools = training_set(dataset, VariantConfig(train_on=("synthetic",), synthetic="vae"), synthetic_set())
    assert classes.tolist() == [1, 4]
    assert [values(p) for p in pools] == [[200, 202, 205], [201, 204]]


def test_source_classes_join_as_classes_of_their_own(dataset: FewShotSet) -> None:
    variant = VariantConfig(train_on=("exemplars", "synthetic", "source"), synthetic="vae")
    classes, pools = training_set(dataset, variant, synthetic_set())
    assert classes.tolist() == [0, 1, 3, 4, 5]  # class order; the one-shot classes keep their pools
    by_class = dict(zip(classes.tolist(), (values(p) for p in pools), strict=True))
    assert by_class[0] == all_of(0) and by_class[5] == all_of(5)  # every real image, no synthetic one
    exemplars = dict(zip(TRAIN, (values(p) for p in training_pools(dataset, EXEMPLARS, empty_synthetic())),
                         strict=True))
    assert by_class[1] == exemplars[1] + [200, 202, 205] and by_class[3] == exemplars[3]


def test_the_order_of_train_on_does_not_change_the_training_set(dataset: FewShotSet) -> None:
    a = training_set(dataset, VariantConfig(train_on=("source", "synthetic", "exemplars"), synthetic="vae"),
                     synthetic_set())
    b = training_set(dataset, VariantConfig(train_on=("exemplars", "synthetic", "source"), synthetic="vae"),
                     synthetic_set())
    assert a[0].tolist() == b[0].tolist()
    assert all((x == y).all() for x, y in zip(a[1], b[1], strict=True))


def test_source_pools_hold_every_image_of_each_source_class(dataset: FewShotSet) -> None:
    pools = source_pools(dataset)
    assert [values(p) for p in pools] == [all_of(c) for c in SOURCE]


def test_a_synthetic_set_of_another_generator_is_refused(dataset: FewShotSet) -> None:
    with pytest.raises(ValueError, match=r"drawings of 'vae', but the variant trains on 'gan'"):
        training_set(dataset, VariantConfig(train_on=("exemplars", "synthetic"), synthetic="gan"), synthetic_set())


def test_no_variant_of_the_project_trains_on_a_calibration_or_novel_class(dataset: FewShotSet) -> None:
    """Every variant of params.yaml and of each profile, read from the files, over every kind of source."""
    root = Path(__file__).resolve().parents[1]
    configs = [yaml.safe_load((root / "params.yaml").read_text())["variants"]]
    configs += [v for p in sorted((root / "profiles").glob("*.yaml"))
                if (v := (yaml.safe_load(p.read_text()) or {}).get("variants"))]
    held_out = np.flatnonzero(np.isin(ROLES, ["calibration", "novel"]))
    seen_kinds = set()
    for variants in configs:
        for name, raw in variants.items():
            variant = from_dict(VariantConfig, raw, f"variants.{name}")
            synthetic = synthetic_set() if variant.synthetic != "none" else empty_synthetic()
            if variant.synthetic != "none":
                synthetic = SyntheticSet(synthetic.images, synthetic.labels, variant.synthetic)
            classes, pools = training_set(dataset, variant, synthetic)
            seen_kinds |= set(variant.train_on)
            codes = np.concatenate([values(p) for p in pools])
            assert not np.isin(classes, held_out).any(), name
            real = codes[codes < 200]
            assert not np.isin(dataset.labels[real], held_out).any(), name
    assert seen_kinds == set(KINDS), "the project's variants use every kind of source"


# ---------------------------------------------------------------------------- config


def test_the_five_classic_variants_keep_their_meaning() -> None:
    variants = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["variants"]
    cfg = {name: from_dict(VariantConfig, raw, f"variants.{name}") for name, raw in variants.items()}
    assert not cfg["baseline"].classic and cfg["classic"].classic
    assert cfg["baseline"].train_on == cfg["classic"].train_on == ("exemplars",)
    assert cfg["vae"].train_on == cfg["gan"].train_on == ("exemplars", "synthetic")
    assert (cfg["vae"].synthetic, cfg["gan"].synthetic) == ("vae", "gan")
    assert cfg["oracle"].ceiling and not any(cfg[v].ceiling for v in ("baseline", "classic", "vae", "gan"))
    assert all(c.uses_source == name.startswith("src_") for name, c in cfg.items())


@pytest.mark.parametrize("raw, key, why", [
    ({"train_on": []}, "train_on", "a list of distinct source kinds"),
    ({"train_on": ["exemplar"]}, "train_on", "a list of distinct source kinds"),
    ({"train_on": ["exemplars", "exemplars"]}, "train_on", "a list of distinct source kinds"),
    ({"train_on": ["exemplars", "real"]}, "train_on", "not both"),
    ({"train_on": ["exemplars", "synthetic"]}, "synthetic", "exactly when train_on lists `synthetic`"),
    ({"train_on": ["exemplars"], "synthetic": "gan"}, "synthetic", "exactly when train_on lists `synthetic`"),
    ({"train_on": ["real"], "real_per_class": 0}, "real_per_class", ">= 1"),
    ({"train_on": ["exemplars"], "real_per_class": 5}, "real_per_class", "unless train_on lists `real`"),
])
def test_config_rejects_impossible_sources(raw: dict, key: str, why: str) -> None:
    with pytest.raises(ParamsError, match=rf"`variants\.v\.{key}` = .*{why}"):
        from_dict(VariantConfig, raw, "variants.v")


@pytest.mark.parametrize("real_per_class", [1, 5, DRAWERS, 500, None])
def test_config_accepts_any_count_of_real_images_from_1(real_per_class: int | None) -> None:
    cfg = from_dict(VariantConfig, {"train_on": ["real", "source"], "real_per_class": real_per_class}, "variants.o")
    assert cfg.real_per_class == real_per_class and cfg.train_on == ("real", "source")


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ParamsError, match=r"unknown key `variants\.vae\.synthetics`"):
        from_dict(VariantConfig, {"synthetics": "vae"}, "variants.vae")


def test_a_variant_changes_the_siamese_params_for_itself_alone() -> None:
    from pipeline.classifiers.config import SiameseConfig

    base = from_dict(SiameseConfig, {"max_steps": 1500, "loss": "contrastive"}, "siamese")
    shipped = from_dict(VariantConfig, {"train_on": ["exemplars", "source"],
                                        "siamese": {"max_steps": 6000, "loss": "proto"}}, "variants.best")
    cfg = shipped.training_config(base, "variants.best")
    assert (cfg.max_steps, cfg.loss, cfg.lr) == (6000, "proto", base.lr)
    plain = from_dict(VariantConfig, {"train_on": ["exemplars"]}, "variants.classic")
    assert plain.training_config(base, "variants.classic") is base


def test_a_variant_siamese_change_is_checked_naming_its_key() -> None:
    from pipeline.classifiers.config import SiameseConfig

    with pytest.raises(ParamsError, match=r"unknown key `variants\.best\.siamese\.max_step`.*max_steps"):
        from_dict(VariantConfig, {"siamese": {"max_step": 10}}, "variants.best")
    with pytest.raises(ParamsError, match=r"`variants\.best\.siamese\.max_steps` = 0"):  # at load, not at training
        from_dict(VariantConfig, {"siamese": {"max_steps": 0}}, "variants.best")
    with pytest.raises(ParamsError, match=r"`variants\.best\.siamese\.loss` = 'hinge'"):
        from_dict(VariantConfig, {"siamese": {"loss": "hinge"}}, "variants.best")
    assert from_dict(VariantConfig, {"siamese": {"max_steps": 10}}, "variants.best").training_config(
        SiameseConfig(), "variants.best").max_steps == 10
