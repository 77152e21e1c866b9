"""Verification threshold: targets, held-out pairs drawn from labels, known-answer calibration, the params."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.network import SiameseNet
from pipeline.classifiers.training import calibrate_on_held_out, calibrate_verification, calibration_classes
from pipeline.classifiers.verification import calibrate_threshold, error_rates, parse_target, sample_pairs
from pipeline.config import ParamsError, from_dict
from pipeline.data.fewshot import DataError, FewShotSet
from pipeline.data.images import to_tensor


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread: None) -> None:
    """Tiny networks: see conftest.single_thread."""


# ---------------------------------------------------------------------------- targets


@pytest.mark.parametrize(("target", "rate"), [("eer", None), ("far@0.01", 0.01), ("far@.5", 0.5),
                                              ("far@0.001", 0.001)])
def test_parse_target(target: str, rate: float | None) -> None:
    assert parse_target(target) == rate


@pytest.mark.parametrize("target", ["EER", "far", "far@", "far@0", "far@0.0", "far@1", "far@1.5", "far@-0.1",
                                    "far@x", "frr@0.1", "eer "])
def test_parse_target_refuses_and_names_the_forms(target: str) -> None:
    with pytest.raises(ValueError, match=r"not allowed; expected `eer` or `far@X`"):
        parse_target(target)


@pytest.mark.parametrize("target", ["far@2", "median"])
def test_verify_target_param_is_validated_with_its_key(target: str) -> None:
    with pytest.raises(ParamsError, match=rf"`siamese\.verify_target` = '{target}'.*`eer` or `far@X`"):
        from_dict(SiameseConfig, {"verify_target": target}, "siamese")


def test_verify_pairs_param_must_be_positive() -> None:
    with pytest.raises(ParamsError, match=r"`siamese\.verify_pairs` = 0"):
        from_dict(SiameseConfig, {"verify_pairs": 0}, "siamese")


# ---------------------------------------------------------------------------- calibration, known answers

# Same-class pairs score 0.9 0.8 0.7 0.4, different-class pairs 0.6 0.3 0.2 0.1. At 0.6 one same-class
# pair (0.4) is rejected and one different-class pair (0.6) accepted: FAR = FRR = 1/4, the EER.
SIMS = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1])
SAME = np.array([True] * 4 + [False] * 4)


def test_error_rates_by_hand() -> None:
    far, frr = error_rates(SIMS, SAME, np.array([0.05, 0.4, 0.6, 0.65, 1.0]))
    np.testing.assert_allclose(far, [1.0, 0.25, 0.25, 0.0, 0.0])
    np.testing.assert_allclose(frr, [0.0, 0.0, 0.25, 0.25, 1.0])


def test_eer_threshold_is_where_far_equals_frr() -> None:
    cal = calibrate_threshold(SIMS, SAME, "eer")
    assert (cal.threshold, cal.far, cal.frr, cal.n_pairs, cal.target) == (0.6, 0.25, 0.25, 8, "eer")


def test_far_target_takes_the_lowest_threshold_within_it() -> None:
    # FAR <= 0.3 first holds at 0.4 (one false accept out of 4), where no same-class pair is rejected.
    cal = calibrate_threshold(SIMS, SAME, "far@0.3")
    assert (cal.threshold, cal.far, cal.frr) == (0.4, 0.25, 0.0)
    # FAR <= 0.1 needs the threshold above every different-class pair: 0.7 rejects only 0.4.
    cal = calibrate_threshold(SIMS, SAME, "far@0.1")
    assert (cal.threshold, cal.far, cal.frr) == (0.7, 0.0, 0.25)


def test_perfectly_separated_scores_give_zero_error() -> None:
    cal = calibrate_threshold(np.array([0.9, 0.8, 0.2, 0.1]), np.array([True, True, False, False]), "eer")
    assert cal.far == cal.frr == 0.0 and 0.2 < cal.threshold <= 0.8


def test_a_target_no_threshold_meets_rejects_everything() -> None:
    # All different-class pairs score above the same-class ones: FAR 0 only above the maximum.
    cal = calibrate_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([True, True, False, False]), "far@0.01")
    assert cal.threshold > 0.9 and (cal.far, cal.frr) == (0.0, 1.0)


def test_calibration_needs_both_kinds_of_pair() -> None:
    with pytest.raises(ValueError, match="both same-class and different-class"):
        calibrate_threshold(np.array([0.1, 0.2]), np.array([True, True]), "eer")


# ---------------------------------------------------------------------------- held-out pairs


def test_pairs_are_balanced_and_labelled_right(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    dataset, _ = tiny_omniglot
    source = dataset.classes("source")
    pairs = sample_pairs(dataset.labels, source, 500, np.random.default_rng(0))
    assert len(pairs.a) == len(pairs.b) == len(pairs.same) == 1000 and pairs.same.sum() == 500
    la, lb = dataset.labels[pairs.a], dataset.labels[pairs.b]
    assert np.isin(la, source).all() and np.isin(lb, source).all(), "only the classes asked for"
    np.testing.assert_array_equal(la == lb, pairs.same)
    assert (pairs.a != pairs.b).all(), "a same-class pair is two distinct drawings"
    assert len(np.unique(la[pairs.same])) > len(source) // 2, "pairs spread over the classes"


def test_pairs_are_seeded(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    dataset, _ = tiny_omniglot
    first, second, other = (sample_pairs(dataset.labels, dataset.classes("source"), 50, np.random.default_rng(s))
                            for s in (3, 3, 4))
    np.testing.assert_array_equal(first.a, second.a)
    np.testing.assert_array_equal(first.b, second.b)
    assert not np.array_equal(first.a, other.a)


def test_pairs_refuse_impossible_requests() -> None:
    labels = np.array([0, 0, 1])
    with pytest.raises(ValueError, match="class 1 has 1 drawing"):
        sample_pairs(labels, np.array([0, 1]), 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2 classes"):
        sample_pairs(labels, np.array([0]), 5, np.random.default_rng(0))


def test_calibrate_verification_scores_pairs_as_verify_does(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    dataset, _ = tiny_omniglot
    torch.manual_seed(0)
    net = SiameseNet(28, channels=8, embedding_dim=16).eval()
    pairs = sample_pairs(dataset.labels, dataset.classes("source"), 100, np.random.default_rng(0))
    cal = calibrate_verification(net, dataset.images, pairs, "eer")
    # The same numbers from each pair embedded on its own, as `verify` embeds two images.
    sims = np.array([float(net.pair_similarity(*embed_all(net, to_tensor(dataset.images[[a, b]])).split(1)))
                     for a, b in zip(pairs.a, pairs.b, strict=True)])
    far, frr = error_rates(sims, pairs.same, np.array([cal.threshold]))
    assert (cal.far, cal.frr) == (far[0], frr[0])
    assert abs(cal.far - cal.frr) <= 0.02  # 100 pairs of each kind: FAR and FRR move in steps of 0.01


def test_the_saved_threshold_is_set_on_calibration_classes_only(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    """The pairs come from the calibration classes (no model trains on them), and without such classes the
    stage is refused before it trains, naming the params to set."""
    dataset, _ = tiny_omniglot
    torch.manual_seed(0)
    net = SiameseNet(28, channels=8, embedding_dim=16).eval()
    cfg = SiameseConfig(verify_pairs=50)
    calibration = dataset.classes("calibration")
    assert len(calibration) >= 2 and dataset.class_role[calibration].tolist() == ["calibration"] * len(calibration)
    pairs = sample_pairs(dataset.labels, calibration, cfg.verify_pairs, np.random.default_rng(cfg.seed))
    assert set(dataset.labels[np.concatenate([pairs.a, pairs.b])]) <= set(calibration.tolist())
    assert calibrate_on_held_out(net, dataset, cfg) == calibrate_verification(net, dataset.images, pairs, "eer")
    without = dataclasses.replace(dataset, class_role=np.where(dataset.class_role == "calibration", "novel",
                                                               dataset.class_role))
    with pytest.raises(DataError, match=r"0 calibration classes.*Add `calibration: 2` \(groups\) to data\.roles"):
        calibration_classes(without)
