"""One-shot episodes drawn from labels alone: their shape, their rules, their seeding and their refusals."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.episodes import EpisodeError, Episodes, episode_accuracy, mean_ci95, sample_episodes

N_CLASSES, N_DRAWERS = 12, 20


def synthetic_labels(n_classes: int = N_CLASSES, n_drawers: int = N_DRAWERS,
                     shuffle_seed: int | None = 3) -> tuple[np.ndarray, np.ndarray]:
    """labels, drawers [n_classes * n_drawers]; shuffled so that image index says nothing about class or drawer."""
    labels = np.repeat(np.arange(n_classes), n_drawers)
    drawers = np.tile(np.arange(n_drawers), n_classes)
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(len(labels))
        labels, drawers = labels[perm], drawers[perm]
    return labels, drawers


def draw(n_way: int = 5, n_episodes: int = 50, seed: int = 0, classes: np.ndarray | None = None,
         **kwargs: object) -> Episodes:
    labels, _ = synthetic_labels()
    classes = np.arange(N_CLASSES) if classes is None else classes
    return sample_episodes(labels, classes, n_way, n_episodes, np.random.default_rng(seed),
                           **kwargs)  # type: ignore[arg-type]


def test_shapes_and_types() -> None:
    ep = draw(n_way=5, n_episodes=7)
    assert ep.support.shape == ep.query.shape == (7, 5)
    assert ep.support.dtype == ep.query.dtype == np.int64
    assert len(ep) == 7 and ep.n_way == 5
    assert ep.support.min() >= 0 and ep.support.max() < N_CLASSES * N_DRAWERS


def test_support_and_query_share_a_class_but_not_a_drawer() -> None:
    labels, drawers = synthetic_labels()
    ep = draw(n_way=6, n_episodes=200)
    np.testing.assert_array_equal(labels[ep.support], labels[ep.query])
    assert (drawers[ep.support] != drawers[ep.query]).all()
    assert (ep.support != ep.query).all()


def test_classes_within_an_episode_are_distinct_and_drawn_from_the_given_ones() -> None:
    labels, _ = synthetic_labels()
    allowed = np.array([1, 3, 4, 7, 8, 10])
    ep = draw(n_way=6, n_episodes=100, classes=allowed)
    for row in labels[ep.support]:
        assert sorted(row) == sorted(allowed)
    ep = draw(n_way=3, n_episodes=300, classes=allowed)
    used = labels[ep.support]
    assert all(len(set(row)) == 3 for row in used)
    assert set(used.ravel()) == set(allowed)  # every allowed class shows up, no other


def test_same_seed_gives_identical_episodes_and_another_seed_others() -> None:
    a, b, c = draw(seed=11), draw(seed=11), draw(seed=12)
    np.testing.assert_array_equal(a.support, b.support)
    np.testing.assert_array_equal(a.query, b.query)
    assert not np.array_equal(a.support, c.support)


def test_every_drawer_can_be_support_or_query() -> None:
    _, drawers = synthetic_labels()
    ep = draw(n_way=4, n_episodes=400)
    assert set(drawers[ep.support].ravel()) == set(range(N_DRAWERS))
    assert set(drawers[ep.query].ravel()) == set(range(N_DRAWERS))


def test_groups_keep_each_episode_within_one_group() -> None:
    labels, _ = synthetic_labels()
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2])  # [N_CLASSES] e.g. alphabet of each class
    ep = draw(n_way=3, n_episodes=300, groups=groups)
    episode_groups = groups[labels[ep.support]]
    assert (episode_groups == episode_groups[:, :1]).all()
    assert set(episode_groups[:, 0]) == {0, 1, 2}  # every group large enough is used


def test_groups_too_small_for_n_way_are_skipped() -> None:
    labels, _ = synthetic_labels()
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    ep = draw(n_way=4, n_episodes=200, groups=groups)
    episode_groups = groups[labels[ep.support]]
    assert (episode_groups == episode_groups[:, :1]).all()
    assert set(episode_groups[:, 0]) == {0, 1}


def test_fixed_support_is_respected_and_query_is_another_image() -> None:
    labels, drawers = synthetic_labels()
    support_drawer = (np.arange(N_CLASSES) * 7) % N_DRAWERS  # [N_CLASSES] fixed exemplar drawer per class
    # [N_CLASSES] the image index of each class's fixed support (e.g. `dataset.exemplar`)
    fixed_support = np.array([np.flatnonzero((labels == c) & (drawers == support_drawer[c]))[0]
                              for c in range(N_CLASSES)])
    ep = draw(n_way=5, n_episodes=300, fixed_support=fixed_support)
    np.testing.assert_array_equal(ep.support, fixed_support[labels[ep.support]])
    np.testing.assert_array_equal(drawers[ep.support], support_drawer[labels[ep.support]])
    np.testing.assert_array_equal(labels[ep.query], labels[ep.support])
    assert (drawers[ep.query] != drawers[ep.support]).all()
    assert len(set(drawers[ep.query].ravel())) == N_DRAWERS  # queries range over all other drawers


def test_n_way_above_the_classes_available_names_n_way_and_the_most() -> None:
    with pytest.raises(EpisodeError, match=r"n_way=13 but only 12 classes are available in total; .*at most 12"):
        draw(n_way=13)
    with pytest.raises(EpisodeError, match=r"n_way=5 but only 3 classes"):
        draw(n_way=5, classes=np.array([0, 1, 2]))


def test_n_way_above_every_group_names_the_largest_group() -> None:
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    with pytest.raises(EpisodeError, match=r"n_way=6 but only 5 classes are available in any one group"):
        draw(n_way=6, groups=groups)
    # 12 classes in total would be enough; within a group they are not.
    with pytest.raises(EpisodeError, match="lower n_way to at most 5"):
        draw(n_way=10, groups=groups)


def test_the_error_names_the_protocol() -> None:
    with pytest.raises(EpisodeError, match=r"^evaluation\.seen_way: n_way=40"):
        draw(n_way=40, name="evaluation.seen_way")


@pytest.mark.parametrize("n_way", [1, 0, -3])
def test_n_way_below_2_is_refused(n_way: int) -> None:
    with pytest.raises(EpisodeError, match=rf"n_way={n_way}; an episode needs at least 2 classes"):
        draw(n_way=n_way)


def test_n_episodes_below_1_is_refused() -> None:
    with pytest.raises(EpisodeError, match="n_episodes=0"):
        draw(n_episodes=0)


def test_a_class_with_one_image_is_refused() -> None:
    labels, drawers = synthetic_labels(n_classes=3, n_drawers=2, shuffle_seed=None)
    keep = ~((labels == 1) & (drawers == 1))
    with pytest.raises(EpisodeError, match=r"class 1 has 1 image\(s\); a support and a query need 2"):
        sample_episodes(labels[keep], np.arange(3), 2, 4, np.random.default_rng(0))


def test_sampling_needs_only_labels_so_two_images_suffice() -> None:
    labels, drawers = synthetic_labels(n_classes=4, n_drawers=2)
    ep = sample_episodes(labels, np.arange(4), 4, 20, np.random.default_rng(0))
    assert (drawers[ep.support] != drawers[ep.query]).all()
    assert (ep.support != ep.query).all()


def test_classes_with_unequal_image_counts() -> None:
    """A class folder need not hold the same number of images per class: each query is another image."""
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    ep = sample_episodes(labels, np.arange(3), 3, 200, np.random.default_rng(0))
    np.testing.assert_array_equal(labels[ep.support], labels[ep.query])
    assert (ep.support != ep.query).all()
    assert set(ep.query[labels[ep.query] == 1].ravel()) == {2, 3, 4, 5, 6}


# ---------------------------------------------------------------------------- scoring


def test_episode_accuracy_on_hand_made_scores() -> None:
    scores = np.zeros((3, 4, 4))  # [E, N queries, N classes]
    scores[0] = np.eye(4)  # all right
    scores[1] = np.eye(4)[[1, 0, 2, 3]]  # queries 0 and 1 swapped: 2 of 4 right
    scores[2] = np.eye(4)[[1, 2, 3, 0]]  # all wrong
    np.testing.assert_allclose(episode_accuracy(scores), [1.0, 0.5, 0.0])


def test_episode_accuracy_uses_the_highest_score() -> None:
    scores = np.array([[[0.9, 0.2, -1.0], [0.3, 0.1, 0.2], [-5.0, -4.0, -3.0]]])  # [1, 3, 3]
    np.testing.assert_allclose(episode_accuracy(scores), [2 / 3])


def test_mean_ci95_known_values() -> None:
    mean, ci = mean_ci95(np.array([0.0, 1.0, 0.0, 1.0]))
    assert mean == pytest.approx(0.5)
    # sample sd = sqrt(1/3); 1.96 * sd / sqrt(4)
    assert ci == pytest.approx(1.96 * np.sqrt(1 / 3) / 2)
    assert mean_ci95(np.full(10, 0.7)) == pytest.approx((0.7, 0.0))
    mean, ci = mean_ci95(np.array([2.0, 4.0, 6.0]))
    assert (mean, ci) == pytest.approx((4.0, 1.96 * 2.0 / np.sqrt(3)))


def test_mean_ci95_of_one_value_has_no_interval() -> None:
    mean, ci = mean_ci95(np.array([0.25]))
    assert mean == 0.25
    assert np.isnan(ci)
