"""The numbers the evaluate stage reports, on hand-made inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.network import SiameseNet
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor
from pipeline.evaluation import (
    EvaluationConfig,
    class_consistency,
    headline_view,
    mean_pairwise_distance,
    summarize,
    synthetic_measures,
)

CFG = EvaluationConfig(ways=(20, 5), baseline="baseline")


def ci95(values: list[float]) -> float:
    return 1.96 * float(np.std(values, ddof=1)) / np.sqrt(len(values))


def test_summarize_means_cis_and_paired_delta() -> None:
    base20, base5 = [0.2, 0.4, 0.6, 0.8], [0.5, 0.5, 1.0, 1.0]
    vae20, vae5 = [0.3, 0.3, 0.9, 0.9], [1.0, 1.0, 1.0, 1.0]
    accuracy = {
        "baseline": {"20way": np.array(base20), "5way": np.array(base5)},
        "vae": {"20way": np.array(vae20), "5way": np.array(vae5)},
    }
    metrics = summarize(accuracy, CFG)
    assert list(metrics) == ["baseline", "vae"]
    b, v = metrics["baseline"], metrics["vae"]
    assert set(b) == {"acc_20way", "acc_20way_ci95", "acc_5way", "acc_5way_ci95"}
    assert b["acc_20way"] == pytest.approx(0.5) and b["acc_5way"] == pytest.approx(0.75)
    assert b["acc_20way_ci95"] == pytest.approx(ci95(base20), abs=1e-5)
    assert b["acc_5way_ci95"] == pytest.approx(ci95(base5), abs=1e-5)
    assert v["acc_20way"] == pytest.approx(0.6) and v["acc_5way"] == pytest.approx(1.0)
    assert v["acc_5way_ci95"] == 0.0
    # The delta is on the headline protocol (the first of `ways`), and its CI is the paired one:
    # per-episode differences [0.1, -0.1, 0.3, 0.1], not the two CIs combined.
    diffs = [0.1, -0.1, 0.3, 0.1]
    assert v["delta_20way_vs_baseline"] == pytest.approx(0.1)
    assert v["delta_20way_vs_baseline_ci95"] == pytest.approx(ci95(diffs), abs=1e-5)
    unpaired = np.hypot(ci95(base20), ci95(vae20))
    assert abs(v["delta_20way_vs_baseline_ci95"] - unpaired) > 0.05
    assert "delta_5way_vs_baseline" not in v


def test_summarize_delta_of_a_constant_shift_has_zero_ci() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.7, size=50)
    accuracy = {"baseline": {"20way": base}, "better": {"20way": base + 0.25}}
    m = summarize(accuracy, EvaluationConfig(ways=(20,)))
    assert m["better"]["delta_20way_vs_baseline"] == pytest.approx(0.25)
    assert m["better"]["delta_20way_vs_baseline_ci95"] == 0.0
    assert m["better"]["acc_20way_ci95"] == m["baseline"]["acc_20way_ci95"] > 0.02


def test_summarize_rounds_to_five_decimals() -> None:
    accuracy = {"baseline": {"20way": np.array([1 / 3, 2 / 3, 1 / 7])}}
    value = summarize(accuracy, EvaluationConfig(ways=(20,)))["baseline"]["acc_20way"]
    assert value == round((1 / 3 + 2 / 3 + 1 / 7) / 3, 5)


def test_summarize_headline_follows_ways_and_baseline_name() -> None:
    accuracy = {"real": {"5way": np.array([0.4, 0.6]), "20way": np.array([0.1, 0.3])},
                "gan": {"5way": np.array([0.6, 0.8]), "20way": np.array([0.0, 0.0])}}
    m = summarize(accuracy, EvaluationConfig(ways=(5, 20), baseline="real"))
    assert m["gan"]["delta_5way_vs_real"] == pytest.approx(0.2)
    assert m["gan"]["delta_5way_vs_real_ci95"] == 0.0
    assert "delta_5way_vs_real" not in m["real"]


def test_summarize_unknown_baseline_is_refused_naming_the_variants() -> None:
    accuracy = {"classic": {"20way": np.array([0.5, 0.5])}, "vae": {"20way": np.array([0.5, 0.6])}}
    expected = r"evaluation\.baseline: 'baseline' is not among the variants \['classic', 'vae'\]"
    with pytest.raises(ValueError, match=expected):
        summarize(accuracy, CFG)


def test_mean_pairwise_distance_known_value() -> None:
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # pairwise distances 3, 4, 5
    assert mean_pairwise_distance(points) == pytest.approx(4.0, abs=1e-4)
    assert mean_pairwise_distance(points.double()) == pytest.approx(4.0, abs=1e-4)
    assert mean_pairwise_distance(torch.zeros(5, 3)) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(mean_pairwise_distance(points[:1]))


def orthonormal(k: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """[k, dim] orthonormal rows: each exemplar is unambiguously nearest to itself."""
    q, _ = torch.linalg.qr(torch.randn(dim, k, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def test_class_consistency_is_one_when_drawings_equal_their_exemplars() -> None:
    exemplars = orthonormal(8)
    own = np.repeat(np.arange(8), 3)  # [M = 24], three drawings per exemplar
    score = class_consistency(exemplars[own], own, exemplars, n_way=5, rng=np.random.default_rng(0))
    assert score == 1.0


def test_class_consistency_is_zero_when_drawings_equal_other_exemplars() -> None:
    exemplars = orthonormal(5)
    own = np.repeat(np.arange(5), 4)
    looks_like = (own + 1) % 5  # each drawing is a copy of the next class's exemplar
    # n_way = all 5 exemplars: the look-alike is always among the alternatives, so every drawing is a miss.
    score = class_consistency(exemplars[looks_like], own, exemplars, n_way=5, rng=np.random.default_rng(0))
    assert score == 0.0


def test_class_consistency_counts_partial_hits() -> None:
    exemplars = orthonormal(4)
    own = np.array([0, 1, 2, 3])
    embed = exemplars[[0, 1, 3, 2]]  # two right, two swapped
    assert class_consistency(embed, own, exemplars, n_way=4, rng=np.random.default_rng(1)) == 0.5


def test_class_consistency_needs_n_way_exemplars() -> None:
    exemplars = orthonormal(3)
    with pytest.raises(ValueError, match="needs 5 exemplars, only 3 are available"):
        class_consistency(exemplars, np.arange(3), exemplars, n_way=5, rng=np.random.default_rng(0))


def test_summarize_compares_with_further_references() -> None:
    accuracy = {"baseline": {"20way": np.array([0.2, 0.4])}, "classic": {"20way": np.array([0.5, 0.7])},
                "vae": {"20way": np.array([0.6, 0.9])}}
    m = summarize(accuracy, EvaluationConfig(ways=(20,), compare_with=("classic",)))
    assert m["vae"]["delta_20way_vs_classic"] == pytest.approx(0.15)
    assert m["vae"]["delta_20way_vs_classic_ci95"] == pytest.approx(ci95([0.1, 0.2]), abs=1e-5)
    assert "delta_20way_vs_classic" not in m["classic"] and "delta_20way_vs_classic" not in m["baseline"]
    with pytest.raises(ValueError, match=r"evaluation\.compare_with: 'oracle'"):
        summarize(accuracy, EvaluationConfig(ways=(20,), compare_with=("oracle",)))


def test_summarize_pairs_the_seen_class_protocol_too() -> None:
    """Deltas on the headline and on the one-shot classes themselves (`seen`), each paired per episode."""
    accuracy = {"baseline": {"20way": np.array([0.2, 0.4]), "5way": np.array([0.5, 0.5]), "seen": np.array([0.3, 0.3])},
                "src_classic": {"20way": np.array([0.8, 0.8]), "5way": np.array([0.9, 0.9]),
                                "seen": np.array([0.6, 0.7])},
                "src_gan": {"20way": np.array([0.8, 0.9]), "5way": np.array([0.9, 1.0]), "seen": np.array([0.7, 0.9])}}
    m = summarize(accuracy, EvaluationConfig(ways=(20, 5), compare_with=("src_classic",)))
    assert m["src_gan"]["delta_seen_vs_src_classic"] == pytest.approx(0.15)
    assert m["src_gan"]["delta_seen_vs_src_classic_ci95"] == pytest.approx(ci95([0.1, 0.2]), abs=1e-5)
    assert m["src_gan"]["delta_20way_vs_src_classic"] == pytest.approx(0.05)
    assert m["src_classic"]["delta_seen_vs_baseline"] == pytest.approx(0.35)
    assert not any(k.startswith("delta_5way") for v in m.values() for k in v), "the headline and seen only"


def test_synthetic_measures_on_copies_and_on_other_classes(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    """Copies of the exemplar: consistent, no diversity. Drawings of other classes: low consistency."""
    dataset, _ = tiny_omniglot
    torch.manual_seed(0)
    ref = SiameseNet(28, channels=8, embedding_dim=16)
    novel = dataset.classes("novel")
    ex_idx = np.array([np.flatnonzero(dataset.labels == c)[0] for c in novel])
    copies = np.repeat(dataset.images[ex_idx], 3, axis=0)
    labels = np.repeat(novel, 3)
    cfg = EvaluationConfig(consistency_way=20)
    embeddings = embed_all(ref, to_tensor(dataset.images))
    same = synthetic_measures(ref, dataset, embeddings, ex_idx, copies, labels, cfg)
    assert same["synthetic_class_consistency"] == 1.0
    assert same["synthetic_diversity"] == pytest.approx(0.0, abs=1e-3)
    assert 0.0 < same["real_class_consistency"] <= 1.0
    assert same["synthetic_ink_ratio"] == 1.0
    real_idx = np.flatnonzero(np.isin(dataset.labels, novel) & ~np.isin(np.arange(len(dataset.labels)), ex_idx))
    exemplar_of = {int(c): i for c, i in zip(novel, ex_idx, strict=True)}
    per_drawing = [dataset.images[i].sum(dtype=np.float64)
                   / dataset.images[exemplar_of[int(dataset.labels[i])]].sum(dtype=np.float64) for i in real_idx]
    assert same["real_ink_ratio"] == pytest.approx(np.mean(per_drawing), abs=1e-5)
    fainter = synthetic_measures(ref, dataset, embeddings, ex_idx, copies // 2, labels, cfg)
    assert fainter["synthetic_ink_ratio"] == pytest.approx(0.5, abs=0.01)
    shifted = np.repeat(dataset.images[np.roll(ex_idx, 1)], 3, axis=0)  # each labelled as the next class
    other = synthetic_measures(ref, dataset, embeddings, ex_idx, shifted, labels, cfg)
    assert other["synthetic_class_consistency"] < 0.2


def test_headline_view_keeps_each_protocol_and_the_headline_deltas_only() -> None:
    """A row a variant for `dvc metrics show`: accuracies per protocol (in build_episodes' order) and the
    headline's delta to the baseline and each compare_with reference; no CIs, no seen deltas, no measures."""
    accuracy = {"baseline": {"20way": np.array([0.2, 0.4]), "5way": np.array([0.5, 0.5]),
                             "20way_within": np.array([0.1, 0.3]), "seen": np.array([0.3, 0.3])},
                "classic": {"20way": np.array([0.5, 0.7]), "5way": np.array([0.8, 0.8]),
                            "20way_within": np.array([0.4, 0.4]), "seen": np.array([0.6, 0.6])},
                "gan": {"20way": np.array([0.6, 0.9]), "5way": np.array([0.9, 0.9]),
                        "20way_within": np.array([0.5, 0.6]), "seen": np.array([0.7, 0.8])}}
    cfg = EvaluationConfig(ways=(20, 5), within_group_way=20, compare_with=("classic",))
    assert cfg.protocols == ["20way", "5way", "20way_within", "seen"]
    metrics = summarize(accuracy, cfg)
    metrics["gan"]["synthetic_class_consistency"] = 0.9
    view = headline_view(metrics, cfg)
    assert list(view["gan"]) == ["acc_20way", "acc_5way", "acc_20way_within", "acc_seen", "delta_vs_baseline",
                                 "delta_vs_classic"]
    assert view["gan"]["delta_vs_classic"] == metrics["gan"]["delta_20way_vs_classic"] == pytest.approx(0.15)
    assert view["gan"]["acc_20way_within"] == metrics["gan"]["acc_20way_within"]
    assert list(view["classic"]) == ["acc_20way", "acc_5way", "acc_20way_within", "acc_seen", "delta_vs_baseline"]
    assert list(view["baseline"]) == ["acc_20way", "acc_5way", "acc_20way_within", "acc_seen"]
    assert EvaluationConfig(ways=(10,), within_group_way=None).protocols == ["10way", "seen"]
