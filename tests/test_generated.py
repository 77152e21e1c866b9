"""Using generated drawings: synthetic-support prototypes, fixed-exemplar episodes, the sweep's nested sets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.checkpoints import FILENAME
from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.fewshot import SiameseClassifier, class_prototypes, embed_all, episode_scores
from pipeline.classifiers.network import SiameseNet, load_siamese, save_siamese
from pipeline.config import ParamsError, from_dict
from pipeline.data.augment import ClassicAugmentConfig
from pipeline.data.episodes import EpisodeError, Episodes
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor
from pipeline.data.synthetic import SyntheticSet
from pipeline.evaluation import fixed_support_episodes, synthetic_support
from pipeline.generators.synthesis import SweepConfig, novel_exemplars
from pipeline.variants import VariantConfig, training_pools
from stages.sweep import reusable
from tests.drawings import DRAWERS
from tests.drawings import coded_dataset as make_coded_dataset


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread: None) -> None:
    """Tiny networks: see conftest.single_thread."""


def metric_net() -> SiameseNet:
    """Only its kind matters to the prototypes: cosine similarity of unit embeddings."""
    return SiameseNet(16, channels=2, embedding_dim=3)


# ---------------------------------------------------------------------------- prototypes


EMBEDDINGS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]])  # [N = 4, D]
# One episode: exemplar rows 0 and 2 of EMBEDDINGS as the support, rows 1 and 3 as the queries.
EPISODE = Episodes(support=np.array([[0, 2]]), query=np.array([[1, 3]]))


def test_class_prototypes_are_normalised_means() -> None:
    labels = np.array([7, 2, 7, 2])  # any label values, not in order
    classes, protos = class_prototypes(metric_net(), EMBEDDINGS, labels)
    np.testing.assert_array_equal(classes, [2, 7])
    torch.testing.assert_close(protos[0], torch.tensor([0.6, 1.8, 0.0]) / (0.6**2 + 1.8**2) ** 0.5)
    torch.testing.assert_close(protos[1], torch.tensor([1.0, 0.0, 1.0]) / 2**0.5)


def test_prototype_replaces_the_exemplar_by_its_normalised_mean() -> None:
    synthetic = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    owner = np.array([0, 0, 2])  # the image each joins: two drawings of exemplar 0, one of exemplar 2
    before = EMBEDDINGS.clone()
    scores = episode_scores(metric_net(), EMBEDDINGS, EPISODE, extra_support=(synthetic, owner))
    # mean([1,0,0], [0,1,0], [0,1,0]) = [1/3, 2/3, 0], unit length again: [1, 2, 0] / sqrt(5)
    protos = torch.stack([torch.tensor([1.0, 2.0, 0.0]) / 5**0.5, torch.tensor([1.0, 0.0, 1.0]) / 2**0.5])
    assert scores.shape == (1, 2, 2)
    np.testing.assert_allclose(scores[0], (EMBEDDINGS[[1, 3]] @ protos.T).numpy(), atol=1e-6)
    assert torch.equal(EMBEDDINGS, before), "the input is not changed in place"


def test_prototype_of_copies_is_the_exemplar() -> None:
    episode = Episodes(support=np.array([[3, 1]]), query=np.array([[0, 2]]))
    alone = episode_scores(metric_net(), EMBEDDINGS, episode)
    copies = EMBEDDINGS[[3, 3, 3]]  # exemplar 1 (row 1) has no synthetic drawing at all
    joined = episode_scores(metric_net(), EMBEDDINGS, episode, extra_support=(copies, np.array([3, 3, 3])))
    np.testing.assert_allclose(joined, alone, atol=1e-6)


def test_extra_support_of_an_image_outside_the_episode_changes_nothing() -> None:
    alone = episode_scores(metric_net(), EMBEDDINGS, EPISODE)
    joined = episode_scores(metric_net(), EMBEDDINGS, EPISODE,
                            extra_support=(torch.tensor([[0.0, 1.0, 0.0]]), np.array([1])))  # row 1 is a query
    np.testing.assert_array_equal(joined, alone)


def test_prototype_of_nothing_is_the_exemplar() -> None:
    alone = episode_scores(metric_net(), EMBEDDINGS, EPISODE)
    none = episode_scores(metric_net(), EMBEDDINGS, EPISODE, extra_support=(torch.empty(0, 3), np.array([], np.int64)))
    np.testing.assert_array_equal(none, alone)


def test_prototype_of_a_bce_net_is_the_plain_mean() -> None:
    """The Koch et al. head compares raw embeddings: the mean is not scaled back to unit length."""
    net = SiameseNet(16, channels=2, embedding_dim=3, loss="bce")
    classes, protos = class_prototypes(net, torch.cat([EMBEDDINGS[:1], torch.tensor([[0.0, 1.0, 0.0]] * 2)]),
                                       np.array([0, 0, 0]))
    np.testing.assert_array_equal(classes, [0])
    torch.testing.assert_close(protos[0], torch.tensor([1 / 3, 2 / 3, 0.0]))


# ---------------------------------------------------------------------------- fixed-exemplar episodes


def exemplar_of(dataset: FewShotSet, exemplar_idx: np.ndarray) -> dict[int, int]:
    return {int(dataset.labels[i]): int(i) for i in exemplar_idx}


def test_fixed_support_episodes_use_the_exemplar(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    """Every support is its class's given exemplar; every query another drawer's drawing of the same class."""
    dataset, _ = tiny_omniglot
    exemplar_idx = novel_exemplars(dataset, 10, seed=3)
    episodes = fixed_support_episodes(dataset, exemplar_idx, n_way=5, n_episodes=40, seed=0)
    assert episodes.support.shape == episodes.query.shape == (40, 5)
    given = exemplar_of(dataset, exemplar_idx)
    support_class, query_class = dataset.labels[episodes.support], dataset.labels[episodes.query]
    assert set(support_class.ravel()) == set(given), "only the classes of the given exemplars, every one of them"
    assert all(len(set(row)) == 5 for row in support_class), "five different classes per episode"
    assert all(int(s) == given[int(c)] for s, c in zip(episodes.support.ravel(), support_class.ravel(), strict=True))
    np.testing.assert_array_equal(query_class, support_class)
    assert (dataset.instances[episodes.query] != dataset.instances[episodes.support]).all()
    assert len(set(dataset.instances[episodes.query].ravel())) > 5, "the query drawer is drawn, not fixed"


def test_fixed_support_episodes_are_seeded(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    dataset, _ = tiny_omniglot
    exemplar_idx = novel_exemplars(dataset, None, seed=0)
    first = fixed_support_episodes(dataset, exemplar_idx, 5, 20, seed=1)
    again = fixed_support_episodes(dataset, exemplar_idx, 5, 20, seed=1)
    other = fixed_support_episodes(dataset, exemplar_idx, 5, 20, seed=2)
    np.testing.assert_array_equal(first.support, again.support)
    np.testing.assert_array_equal(first.query, again.query)
    assert not np.array_equal(first.query, other.query)


def test_fixed_support_episodes_refuse_too_many_ways(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    dataset, _ = tiny_omniglot
    exemplar_idx = novel_exemplars(dataset, 6, seed=0)
    with pytest.raises(EpisodeError, match=r"7-way episodes with a fixed novel-class exemplar as support: n_way=7 "
                                           r"but only 6 classes are available in total; lower n_way to at most 6"):
        fixed_support_episodes(dataset, exemplar_idx, n_way=7, n_episodes=5, seed=0)


# ---------------------------------------------------------------------------- synthetic support


def test_copies_of_the_exemplars_change_no_episode(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    """Synthetic drawings that are exact copies leave each prototype at its exemplar: delta 0, paired CI 0."""
    dataset, _ = tiny_omniglot
    torch.manual_seed(0)
    net = SiameseNet(28, channels=8, embedding_dim=16)
    embeddings = embed_all(net, to_tensor(dataset.images))
    exemplar_idx = novel_exemplars(dataset, None, seed=0)
    episodes = fixed_support_episodes(dataset, exemplar_idx, n_way=5, n_episodes=60, seed=0)
    copies = np.repeat(dataset.images[exemplar_idx], 3, axis=0)
    labels = np.repeat(dataset.labels[exemplar_idx], 3)
    m = synthetic_support(net, dataset, embeddings, episodes, exemplar_idx, copies, labels, "5way_fixed")
    assert set(m) == {"acc_5way_fixed_exemplar", "acc_5way_fixed_exemplar_ci95", "acc_5way_fixed_prototype",
                      "acc_5way_fixed_prototype_ci95", "delta_5way_fixed_prototype_vs_exemplar",
                      "delta_5way_fixed_prototype_vs_exemplar_ci95"}
    assert m["acc_5way_fixed_prototype"] == m["acc_5way_fixed_exemplar"]
    assert m["acc_5way_fixed_prototype_ci95"] == m["acc_5way_fixed_exemplar_ci95"] > 0
    assert m["delta_5way_fixed_prototype_vs_exemplar"] == 0.0
    assert m["delta_5way_fixed_prototype_vs_exemplar_ci95"] == 0.0


def test_other_classes_drawings_move_the_prototypes(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    """Drawings of the wrong class, five per exemplar, pull each prototype away from its class: accuracy falls."""
    dataset, _ = tiny_omniglot
    torch.manual_seed(0)
    net = SiameseNet(28, channels=8, embedding_dim=16)
    embeddings = embed_all(net, to_tensor(dataset.images))
    exemplar_idx = novel_exemplars(dataset, None, seed=0)
    episodes = fixed_support_episodes(dataset, exemplar_idx, n_way=5, n_episodes=60, seed=0)
    wrong = np.repeat(dataset.images[np.roll(exemplar_idx, 1)], 5, axis=0)  # each the previous class's exemplar
    labels = np.repeat(dataset.labels[exemplar_idx], 5)
    m = synthetic_support(net, dataset, embeddings, episodes, exemplar_idx, wrong, labels, "k")
    assert m["acc_k_prototype"] < m["acc_k_exemplar"] - 0.05
    assert m["delta_k_prototype_vs_exemplar"] == pytest.approx(m["acc_k_prototype"] - m["acc_k_exemplar"], abs=1e-4)


# ---------------------------------------------------------------------------- novel exemplars


def test_novel_exemplars_one_per_novel_class(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    dataset, _ = tiny_omniglot
    novel = dataset.classes("novel")
    idx = novel_exemplars(dataset, None, seed=0)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(dataset.labels[idx], novel)  # one each, in class order
    np.testing.assert_array_equal(novel_exemplars(dataset, len(novel) + 5, seed=0), idx)  # more than held: all
    assert len(set(dataset.instances[idx])) > 1, "the drawer of each exemplar is drawn, not fixed"


def test_novel_exemplars_of_some_classes(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    dataset, _ = tiny_omniglot
    idx = novel_exemplars(dataset, 7, seed=0)
    classes = dataset.labels[idx]
    assert len(idx) == 7 and len(set(classes)) == 7
    assert (dataset.class_role[classes] == "novel").all()
    np.testing.assert_array_equal(novel_exemplars(dataset, 7, seed=0), idx)
    assert not np.array_equal(novel_exemplars(dataset, 7, seed=1), idx)
    assert not np.array_equal(novel_exemplars(dataset, None, seed=1), novel_exemplars(dataset, None, seed=0))


# ---------------------------------------------------------------------------- nested synthetic sets

ROLES = np.array(["source", "train", "novel", "train", "train"])
EXEMPLAR_DRAWER = np.array([-1, 7, -1, 0, 19])  # classes 1, 3, 4 are the one-shot training classes
TRAIN = [1, 3, 4]
SIZE = 4


@pytest.fixture
def coded_dataset() -> FewShotSet:
    return make_coded_dataset(ROLES, EXEMPLAR_DRAWER, SIZE)


def drawn_set(per_class: int = 4, generator: str = "gan") -> SyntheticSet:
    """`per_class` drawings of each training class, drawn in rounds (classes 1, 3, 4, 1, 3, 4, ...); value 150 + k."""
    labels = np.tile(TRAIN, per_class)
    images = np.stack([np.full((1, SIZE, SIZE), 150 + k, np.uint8) for k in range(len(labels))])
    return SyntheticSet(images=images, labels=labels, generator=generator)


def values(pool: np.ndarray) -> list[int]:
    """The code of each image [C, S, S] in a pool (each image is constant)."""
    assert (pool == pool[:, :1, :1, :1]).all()
    return pool[:, 0, 0, 0].astype(int).tolist()


def test_for_class_takes_the_first_n_in_drawing_order() -> None:
    synthetic = drawn_set()
    assert values(synthetic.for_class(3)) == [151, 154, 157, 160]
    assert values(synthetic.for_class(3, 2)) == [151, 154]
    assert values(synthetic.for_class(3, 4)) == [151, 154, 157, 160]
    assert synthetic.for_class(3, 0).shape == (0, 1, SIZE, SIZE)
    assert synthetic.for_class(2).shape == (0, 1, SIZE, SIZE), "a class never drawn has no drawings"


def test_for_class_refuses_more_than_were_drawn() -> None:
    with pytest.raises(ValueError, match=r"5 synthetic drawings of class 4 were asked for, the 'gan' set holds 4; "
                                         r"raise synthesis\.n_per_exemplar or sweep\.counts and rerun synthesize"):
        drawn_set().for_class(4, 5)


def test_the_set_records_how_many_drawings_the_variants_train_on(tmp_path: Path) -> None:
    """synthesize writes `variant_count` (synthesis.n_per_exemplar); a set without it means all drawings."""
    synthetic = dataclasses.replace(drawn_set(), info={"n_per_exemplar": 4, "variant_count": 2})
    synthetic.save(tmp_path)
    assert SyntheticSet.load(tmp_path).variant_count == 2
    assert drawn_set().variant_count is None


def test_the_empty_set_gives_nothing_for_any_count() -> None:
    """The real-only variants read the empty 'none' set whatever n_per_exemplar is."""
    empty = SyntheticSet(images=np.empty((0, 1, SIZE, SIZE), np.uint8), labels=np.empty(0, np.int64),
                         generator="none")
    assert empty.for_class(1, 20).shape == (0, 1, SIZE, SIZE)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_pools_hold_the_exemplar_then_k_synthetic_drawings(coded_dataset: FewShotSet, k: int) -> None:
    synthetic = drawn_set()
    variant = VariantConfig(train_on=("exemplars", "synthetic"), synthetic="gan")
    pools = training_pools(coded_dataset, variant, synthetic, n_synthetic=k)
    full = training_pools(coded_dataset, variant, synthetic)
    for c, pool, whole in zip(TRAIN, pools, full, strict=True):
        codes = values(pool)
        assert len(codes) == 1 + k
        assert codes[0] == c * DRAWERS + EXEMPLAR_DRAWER[c], "the exemplar first"
        assert codes[1:] == values(synthetic.for_class(c))[:k]
        assert codes == values(whole)[: 1 + k], "the sweep's sets are prefixes of the full set"


def test_pools_refuse_more_synthetic_drawings_than_drawn(coded_dataset: FewShotSet) -> None:
    with pytest.raises(ValueError, match="5 synthetic drawings of class 1 were asked for"):
        training_pools(coded_dataset, VariantConfig(train_on=("exemplars", "synthetic"), synthetic="gan"), drawn_set(),
                       n_synthetic=5)


# ---------------------------------------------------------------------------- the sweep


def test_sweep_counts_from_params() -> None:
    assert from_dict(SweepConfig, {"counts": [0, 5, 10]}, "sweep").counts == (0, 5, 10)
    assert from_dict(SweepConfig, {"counts": [3]}, "sweep").counts == (3,)
    assert SweepConfig().counts == (0, 5, 10, 20, 50)


@pytest.mark.parametrize("counts", [[5, 0], [0, 5, 5], [-1, 5], []])
def test_sweep_counts_must_be_increasing_and_non_negative(counts: list[int]) -> None:
    with pytest.raises(ParamsError, match=r"`sweep\.counts`.*a non-empty increasing list of counts >= 0"):
        from_dict(SweepConfig, {"counts": counts}, "sweep")


SIAMESE = SiameseConfig(channels=4, embedding_dim=8, max_steps=10)
AUGMENT = ClassicAugmentConfig()


def classifier_ckpt(variant: VariantConfig, synthetic_per_class: int = 0, siamese: SiameseConfig = SIAMESE,
                    augment: ClassicAugmentConfig = AUGMENT) -> dict:
    """What train_classifier writes beside the weights (see stages/train_classifier.py), as JSON reads it back."""
    real = 1 if "exemplars" in variant.train_on else 20
    return {"variant": "x", "variant_config": json.loads(json.dumps(dataclasses.asdict(variant))),
            "siamese_config": dataclasses.asdict(siamese), "augment_config": dataclasses.asdict(augment),
            "images_per_class": [real + synthetic_per_class] * 3}


CLASSIC = VariantConfig(train_on=("exemplars",))
GAN = VariantConfig(train_on=("exemplars", "synthetic"), synthetic="gan")
VAE = VariantConfig(train_on=("exemplars", "synthetic"), synthetic="vae")


def test_reusable_reads_a_saved_classifier(tmp_path: Path) -> None:
    """A checkpoint as written and read back: the generator's variant counts its synthetic drawings."""
    save_siamese(SiameseNet(16, channels=2, embedding_dim=2), tmp_path / FILENAME, extra=classifier_ckpt(GAN, 20))
    _, extra = load_siamese(tmp_path)  # the model folder, as the sweep stage reads it
    assert extra == classifier_ckpt(GAN, 20)
    assert reusable(extra, "gan", SIAMESE, AUGMENT) == 20


@pytest.mark.parametrize(
    ("ckpt", "expected"),
    [
        (classifier_ckpt(CLASSIC), 0),
        (classifier_ckpt(GAN, 20), 20),
        (classifier_ckpt(GAN, 5), 5),
        (classifier_ckpt(VAE, 20), None),  # another generator's drawings
        (classifier_ckpt(VariantConfig(train_on=("real",))), None),  # oracle
        (classifier_ckpt(VariantConfig(classic=False)), None),  # baseline: no classic transforms
        (classifier_ckpt(VariantConfig(train_on=("exemplars", "source"))), None),  # src_classic: source classes too
        (classifier_ckpt(dataclasses.replace(GAN, train_on=("exemplars", "synthetic", "source")), 20), None),
        (classifier_ckpt(GAN, 20, siamese=dataclasses.replace(SIAMESE, max_steps=11)), None),
        (classifier_ckpt(CLASSIC, augment=dataclasses.replace(AUGMENT, rotate=5.0)), None),
    ],
    ids=["classic", "gan", "gan-5", "vae", "oracle", "baseline", "src_classic", "src_gan", "siamese-changed",
         "augment-changed"],
)
def test_reusable_only_for_the_same_settings(ckpt: dict, expected: int | None) -> None:
    assert reusable(ckpt, "gan", SIAMESE, AUGMENT) == expected


def test_reusable_ignores_a_checkpoint_without_variant_settings() -> None:
    """A classifier from an older pipeline carries no variant or configs: it is trained again, not guessed at."""
    assert reusable({"images_per_class": [1, 1]}, "gan", SIAMESE, AUGMENT) is None


def test_episode_prototypes_agree_with_the_classifier_prototypes() -> None:
    """The evaluation's prototype is the one SiameseClassifier.process_support makes from the same drawings."""
    torch.manual_seed(0)
    net = SiameseNet(16, channels=2, embedding_dim=4).eval()
    images = torch.rand(6, 1, 16, 16)  # exemplars 0 and 1, queries 2 and 3, two synthetic drawings of exemplar 0
    emb = embed_all(net, images)
    episode = Episodes(support=np.array([[0, 1]]), query=np.array([[2, 3]]))
    scores = episode_scores(net, emb[:4], episode, extra_support=(emb[4:], np.array([0, 0])))
    classifier = SiameseClassifier(net)
    classifier.process_support(images[[0, 4, 5, 1]], np.array([0, 0, 0, 1]))
    assert classifier.support_embeddings is not None
    torch.testing.assert_close(classifier.support_embeddings[0], F.normalize(emb[[0, 4, 5]].mean(0), dim=0),
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(scores[0], classifier.scores(images[2:4]).numpy(), atol=1e-5)
