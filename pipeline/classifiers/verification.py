"""Verification: do two drawings show the same class? A similarity threshold calibrated on held-out pairs.

The threshold is chosen on pairs of drawings from classes the classifier never trained on, for the
target `siamese.verify_target` names:

- `eer`: the equal error rate, where as many different-class pairs are accepted (FAR) as same-class
  pairs are rejected (FRR);
- `far@X`: at most a fraction X of different-class pairs accepted, and as few same-class pairs
  rejected as that allows.

A pair is judged "same class" when its similarity is at or above the threshold. Pairs are drawn
from labels alone, like episodes; this module is plain numpy.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

TARGETS = "`eer` or `far@X` with X a decimal fraction, 0 < X < 1 (e.g. far@0.01)"
TARGET_PATTERN = re.compile(r"eer|far@(0?\.(?=\d*[1-9])\d+)")


def parse_target(target: str) -> float | None:
    """`eer` -> None; `far@X` -> X. Anything else is a ValueError naming the allowed forms."""
    match = TARGET_PATTERN.fullmatch(target)
    if match is None:
        raise ValueError(f"verification target {target!r} is not allowed; expected {TARGETS}")
    return None if match.group(1) is None else float(match.group(1))


@dataclasses.dataclass(frozen=True)
class Pairs:
    a: np.ndarray  # [P] image index of each pair's first drawing
    b: np.ndarray  # [P] image index of its second drawing
    same: np.ndarray  # [P] bool: both drawings of one class


def sample_pairs(labels: np.ndarray, classes: np.ndarray, n_pairs: int, rng: np.random.Generator) -> Pairs:
    """`n_pairs` same-class pairs, then `n_pairs` different-class pairs, of drawings of `classes`.

    labels: [N] class of each image. A same-class pair is two distinct drawings of a class drawn
    at random; a different-class pair is one drawing each of two distinct classes.
    """
    classes = np.asarray(classes)
    if n_pairs < 1:
        raise ValueError(f"verification pairs: n_pairs={n_pairs}; need at least 1")
    if len(classes) < 2:
        raise ValueError(f"verification pairs need at least 2 classes, got {len(classes)}")
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], classes)
    counts = np.searchsorted(labels[order], classes, side="right") - starts
    if counts.min() < 2:
        raise ValueError(f"verification pairs: class {classes[counts.argmin()]} has {counts.min()} drawing(s); "
                         "a same-class pair needs 2")

    def drawing(cls: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return order[starts[cls] + pos]

    # Same class: two distinct positions within the class.
    c = rng.integers(len(classes), size=n_pairs)
    i = rng.integers(counts[c])
    j = rng.integers(counts[c] - 1)
    j += j >= i
    # Different classes: a second class other than the first.
    c1 = rng.integers(len(classes), size=n_pairs)
    c2 = rng.integers(len(classes) - 1, size=n_pairs)
    c2 += c2 >= c1
    return Pairs(
        a=np.concatenate([drawing(c, i), drawing(c1, rng.integers(counts[c1]))]),
        b=np.concatenate([drawing(c, j), drawing(c2, rng.integers(counts[c2]))]),
        same=np.concatenate([np.ones(n_pairs, bool), np.zeros(n_pairs, bool)]),
    )


@dataclasses.dataclass(frozen=True)
class Calibration:
    target: str  # `eer` or `far@X`
    threshold: float  # "same class" when similarity >= threshold
    far: float  # fraction of the different-class pairs accepted at the threshold
    frr: float  # fraction of the same-class pairs rejected at the threshold
    n_pairs: int  # pairs it was measured on (same + different)


def error_rates(similarities: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAR and FRR [T] at each threshold [T], from pair similarities [P] and labels same [P]."""
    positives, negatives = np.sort(similarities[same]), np.sort(similarities[~same])
    frr = np.searchsorted(positives, thresholds, side="left") / len(positives)
    far = (len(negatives) - np.searchsorted(negatives, thresholds, side="left")) / len(negatives)
    return far, frr


def calibrate_threshold(similarities: np.ndarray, same: np.ndarray, target: str) -> Calibration:
    """The threshold meeting `target` on pairs with `similarities` [P] and labels `same` [P] (bool).

    Candidates are the observed similarities plus one just above the largest (reject everything).
    `eer`: the candidate where FAR and FRR are closest (the lowest such); `far@X`: the lowest
    candidate with FAR <= X, which has the lowest FRR among them.
    """
    similarities = np.asarray(similarities, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if similarities.shape != same.shape or similarities.ndim != 1:
        raise ValueError(f"similarities {similarities.shape} and same {same.shape} must be matching 1-d arrays")
    if same.all() or not same.any():
        raise ValueError("calibration needs both same-class and different-class pairs")
    rate = parse_target(target)
    candidates = np.unique(similarities)
    candidates = np.append(candidates, np.nextafter(candidates[-1], np.inf))
    far, frr = error_rates(similarities, same, candidates)
    best = int(np.argmin(np.abs(far - frr))) if rate is None else int(np.flatnonzero(far <= rate)[0])
    return Calibration(target=target, threshold=float(candidates[best]), far=float(far[best]),
                       frr=float(frr[best]), n_pairs=len(same))
