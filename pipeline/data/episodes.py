"""N-way one-shot episodes, drawn from labels alone (no image is decoded to sample one).

An episode holds `n_way` classes, one support image and one query image per class, the query
always another image of the class than the support (in Omniglot, another drawer's). Episodes are
index arrays into a dataset, so every variant is scored on exactly the same episodes.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class EpisodeError(ValueError):
    """The requested episodes cannot be drawn from the classes available."""


@dataclasses.dataclass(frozen=True)
class Episodes:
    support: np.ndarray  # [E, N] image index of each class's support image
    query: np.ndarray  # [E, N] image index of each class's query image (same column = same class)

    @property
    def n_way(self) -> int:
        return int(self.support.shape[1])

    def __len__(self) -> int:
        return int(self.support.shape[0])


def sample_episodes(
    labels: np.ndarray,
    classes: np.ndarray,
    n_way: int,
    n_episodes: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
    fixed_support: np.ndarray | None = None,
    name: str = "episodes",
) -> Episodes:
    """Draw `n_episodes` `n_way`-way one-shot episodes over `classes`.

    labels: [N] class of each image. classes: the class ids to draw from.
    groups: [n_classes_total] group id per class (e.g. alphabet); when given, all classes of an
        episode come from one group (Lake et al. 2015's within-alphabet protocol).
    fixed_support: [n_classes_total] fixed support image per class (e.g. the one-shot exemplar);
        when None, the support image is drawn at random too.
    """
    if n_way < 2:
        raise EpisodeError(f"{name}: n_way={n_way}; an episode needs at least 2 classes")
    if n_episodes < 1:
        raise EpisodeError(f"{name}: n_episodes={n_episodes}; need at least 1")
    classes = np.asarray(classes)
    if groups is None:
        pools = [classes]
    else:
        pools = [classes[groups[classes] == g] for g in np.unique(groups[classes])]
        pools = [p for p in pools if len(p) >= n_way]
    if not pools or max(len(p) for p in pools) < n_way:
        where = "in any one group" if groups is not None else "in total"
        most = max((int((groups[classes] == g).sum()) for g in np.unique(groups[classes])), default=0) \
            if groups is not None else len(classes)
        raise EpisodeError(
            f"{name}: n_way={n_way} but only {most} classes are available {where}; lower n_way to at most {most}"
        )
    # Images of each class in image order.
    order = np.argsort(labels, kind="stable")
    by_class: dict[int, np.ndarray] = {}
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, classes)
    ends = np.searchsorted(sorted_labels, classes, side="right")
    for c, s, e in zip(classes, starts, ends, strict=True):
        if e - s < 2:
            raise EpisodeError(f"{name}: class {c} has {e - s} image(s); a support and a query need 2")
        by_class[int(c)] = order[s:e]

    support = np.empty((n_episodes, n_way), dtype=np.int64)
    query = np.empty((n_episodes, n_way), dtype=np.int64)
    sizes = np.array([len(p) for p in pools], dtype=np.float64)
    for e in range(n_episodes):
        # Groups are drawn in proportion to their size, so every class is about equally likely.
        pool = pools[rng.choice(len(pools), p=sizes / sizes.sum())] if len(pools) > 1 else pools[0]
        chosen = rng.choice(pool, size=n_way, replace=False)
        for j, c in enumerate(chosen):
            images = by_class[int(c)]
            if fixed_support is not None:
                s_pos = int(np.flatnonzero(images == fixed_support[c])[0])
                q_pos = int(rng.integers(len(images) - 1))
                q_pos += q_pos >= s_pos
            else:
                s_pos, q_pos = rng.choice(len(images), size=2, replace=False)
            support[e, j] = images[s_pos]
            query[e, j] = images[q_pos]
    return Episodes(support=support, query=query)


def episode_accuracy(scores: np.ndarray) -> np.ndarray:
    """Per-episode accuracy from scores [E, N queries, N classes] (higher = more alike)."""
    predicted = scores.argmax(axis=-1)
    return (predicted == np.arange(scores.shape[1])[None, :]).mean(axis=1)


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))
