"""One-shot evaluation: the same seeded episodes for every variant, accuracies with 95% CIs, paired deltas.

Every episode is scored by a `SiameseClassifier` given the episode's support, the same few-shot
classifier that `oneshot-gda predict` scores a user's images with.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from pipeline.classifiers.fewshot import embed_all, episode_scores
from pipeline.classifiers.network import SiameseNet
from pipeline.config import _check
from pipeline.data.episodes import Episodes, episode_accuracy, mean_ci95, sample_episodes
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_tensor


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    OPTIONAL: ClassVar[tuple[str, ...]] = ("compare_with",)  # may be left out: no further references

    ways: tuple[int, ...] = (20, 5)  # N of the N-way episodes over all novel classes; the first is the headline
    # N of the within-group episodes (Lake et al. 2015's within-alphabet protocol); null: none, e.g. for
    # data without groups (the flat class-folder layout), where no group holds N classes.
    within_group_way: int | None = 20
    seen_way: int = 20  # N of the seen-class episodes (exemplar as support, a held-out image as query)
    n_episodes: int = 1000
    consistency_way: int = 20  # N-way alternatives when checking synthetic drawings' class identity
    baseline: str = "baseline"  # the variant every other one is compared with
    compare_with: tuple[str, ...] = ()  # further references for paired deltas (not vs the baseline)
    synthetic_support: bool = True  # also score generator variants with exemplar + synthetic prototypes
    seed: int = 0

    def validate(self, key: str) -> None:
        _check(len(self.ways) > 0 and all(n >= 2 for n in self.ways), f"{key}.ways", self.ways,
               "a non-empty list of N >= 2")
        for name in ("seen_way", "consistency_way"):
            _check(getattr(self, name) >= 2, f"{key}.{name}", getattr(self, name), "N >= 2")
        _check(self.within_group_way is None or self.within_group_way >= 2, f"{key}.within_group_way",
               self.within_group_way, "N >= 2, or null for no within-group episodes")
        _check(self.n_episodes >= 2, f"{key}.n_episodes", self.n_episodes, "at least 2 (for a CI)")

    @property
    def headline(self) -> str:
        return f"{self.ways[0]}way"

    @property
    def protocols(self) -> list[str]:
        """The protocols `build_episodes` draws, in its order: N-way per `ways`, within-group, seen."""
        within = [] if self.within_group_way is None else [f"{self.within_group_way}way_within"]
        return [f"{n}way" for n in self.ways] + within + ["seen"]


def build_episodes(dataset: FewShotSet, cfg: EvaluationConfig) -> dict[str, Episodes]:
    """Every evaluation protocol's episodes, drawn once from labels with the params seed."""
    rng = np.random.default_rng(cfg.seed)
    novel = dataset.classes("novel")
    episodes = {
        f"{n}way": sample_episodes(dataset.labels, novel, n, cfg.n_episodes, rng,
                                   name=f"evaluation.ways: {n}-way novel-class episodes")
        for n in cfg.ways
    }
    if cfg.within_group_way is not None:
        episodes[f"{cfg.within_group_way}way_within"] = sample_episodes(
            dataset.labels, novel, cfg.within_group_way, cfg.n_episodes, rng, groups=dataset.group_ids(),
            name=f"evaluation.within_group_way: {cfg.within_group_way}-way within-group episodes (null: none)")
    episodes["seen"] = sample_episodes(
        dataset.labels, dataset.classes("train"), cfg.seen_way, cfg.n_episodes, rng,
        fixed_support=dataset.exemplar, name=f"evaluation.seen_way: {cfg.seen_way}-way seen-class episodes")
    return episodes


def per_episode_accuracy(net: SiameseNet, embeddings: torch.Tensor,
                         episodes: dict[str, Episodes]) -> dict[str, np.ndarray]:
    """Accuracy of each episode [E] per protocol, from embeddings of every dataset image [N, D]."""
    return {key: episode_accuracy(episode_scores(net, embeddings, ep)) for key, ep in episodes.items()}


def accuracy_metrics(per_protocol: dict[str, np.ndarray]) -> dict[str, float]:
    """`acc_<protocol>` and `acc_<protocol>_ci95` from each protocol's per-episode accuracies."""
    m: dict[str, float] = {}
    for key, acc in per_protocol.items():
        m[f"acc_{key}"], m[f"acc_{key}_ci95"] = mean_ci95(acc)
    return m


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    """Five decimals: below any difference a 1,000-episode CI can tell apart."""
    return {k: round(v, 5) for k, v in metrics.items()}


def summarize(accuracy: dict[str, dict[str, np.ndarray]], cfg: EvaluationConfig) -> dict[str, dict[str, float]]:
    """Per variant: `acc_<protocol>` and `_ci95`; paired deltas, on the headline and the seen-class
    protocol, to the baseline (for every other variant) and to each `compare_with` reference (for
    the variants other than it and the baseline)."""
    for name, ref in [("baseline", cfg.baseline)] + [("compare_with", r) for r in cfg.compare_with]:
        if ref not in accuracy:
            raise ValueError(f"evaluation.{name}: {ref!r} is not among the variants {sorted(accuracy)}")
    metrics: dict[str, dict[str, float]] = {}
    for variant, per_protocol in accuracy.items():
        m = accuracy_metrics(per_protocol)
        for ref in (cfg.baseline, *cfg.compare_with):
            if variant in (ref, cfg.baseline):
                continue
            # Same episodes for both: the per-episode difference gives a paired CI.
            for key in (cfg.headline, "seen"):
                if key in per_protocol:
                    delta = f"delta_{key}_vs_{ref}"
                    m[delta], m[f"{delta}_ci95"] = mean_ci95(per_protocol[key] - accuracy[ref][key])
        metrics[variant] = rounded(m)
    return metrics


def headline_view(metrics: dict[str, dict[str, float]], cfg: EvaluationConfig) -> dict[str, dict[str, float]]:
    """Per variant, what a person compares at a glance (`dvc metrics show`, `dvc exp show`): each protocol's
    accuracy, and the headline's paired delta to the baseline and to each `compare_with` reference as
    `delta_vs_<reference>` (short, so that a variant's row fits 160 columns). The CIs, the seen-class deltas and
    the synthetic-data measures stay in the full metrics file."""
    keys = {f"acc_{protocol}": f"acc_{protocol}" for protocol in cfg.protocols}
    keys |= {f"delta_vs_{ref}": f"delta_{cfg.headline}_vs_{ref}" for ref in (cfg.baseline, *cfg.compare_with)}
    return {variant: {short: m[full] for short, full in keys.items() if full in m} for variant, m in metrics.items()}


def class_consistency(embed: torch.Tensor, own: np.ndarray, exemplar_emb: torch.Tensor, n_way: int,
                      rng: np.random.Generator) -> float:
    """Fraction of drawings whose nearest of `n_way` exemplars (own + others) is their own.

    embed: [M, D] unit embeddings of the drawings; own: [M] row of each drawing's exemplar in
    exemplar_emb [K, D]. The n_way - 1 alternatives are drawn at random among the other exemplars.
    """
    k = len(exemplar_emb)
    if k < n_way:
        raise ValueError(f"consistency needs {n_way} exemplars, only {k} are available; lower consistency_way")
    hits = 0
    for i in range(len(embed)):
        others = rng.choice(k - 1, size=n_way - 1, replace=False)
        others += others >= own[i]
        cands = np.concatenate([[own[i]], others])
        sims = embed[i] @ exemplar_emb[torch.from_numpy(cands)].T
        hits += int(sims.argmax() == 0)
    return hits / max(len(embed), 1)


def mean_pairwise_distance(embed: torch.Tensor) -> float:
    """Mean Euclidean distance over all pairs of rows of [M, D]."""
    if len(embed) < 2:
        return float("nan")
    d = torch.cdist(embed.float(), embed.float())
    m = len(embed)
    return float(d.sum() / (m * (m - 1)))


def ink(images: np.ndarray) -> np.ndarray:
    """Summed foreground intensity of each image [N, C, S, S] -> [N] (float64; 255 per full stroke pixel)."""
    return images.reshape(len(images), -1).sum(axis=1, dtype=np.float64)


def synthetic_measures(ref: SiameseNet, dataset: FewShotSet, dataset_embeddings: torch.Tensor, ex_idx: np.ndarray,
                       images: np.ndarray, labels: np.ndarray, cfg: EvaluationConfig) -> dict[str, float]:
    """Identity and diversity of a generator's drawings of novel classes, in the reference embedding.

    consistency: how often a drawing's nearest of `consistency_way` exemplars is its own exemplar;
    the same for real held-out drawings of those classes is the yardstick. diversity: mean pairwise
    distance of one class's synthetic drawings over that of its 20 real drawings. ink ratio: a
    drawing's ink (summed stroke intensity) over its exemplar's, averaged; below 1, the drawings
    are smaller or fainter than their exemplar (the real drawings' ratio is the yardstick).
    dataset_embeddings: [N, D] the reference's embeddings of every dataset image (already computed
    for its accuracy), so only the synthetic drawings are embedded here.
    """
    if len(images) == 0:
        return {}
    rng = np.random.default_rng(cfg.seed)
    ex_emb = dataset_embeddings[torch.from_numpy(ex_idx)]
    row_of_class = {int(c): k for k, c in enumerate(dataset.labels[ex_idx])}
    syn_emb = embed_all(ref, to_tensor(images))
    own_syn = np.array([row_of_class[int(c)] for c in labels])
    real_idx = np.flatnonzero(np.isin(dataset.labels, dataset.labels[ex_idx]) & ~np.isin(
        np.arange(len(dataset.labels)), ex_idx))
    real_emb = dataset_embeddings[torch.from_numpy(real_idx)]
    own_real = np.array([row_of_class[int(c)] for c in dataset.labels[real_idx]])
    way = min(cfg.consistency_way, len(ex_idx))
    diversity = []
    for c in np.unique(labels):
        syn = syn_emb[torch.from_numpy(labels == c)]
        real = real_emb[torch.from_numpy(dataset.labels[real_idx] == c)]
        diversity.append(mean_pairwise_distance(syn) / mean_pairwise_distance(real))
    ex_ink = ink(dataset.images[ex_idx])
    return {
        "synthetic_class_consistency": round(class_consistency(syn_emb, own_syn, ex_emb, way, rng), 5),
        "real_class_consistency": round(class_consistency(real_emb, own_real, ex_emb, way, rng), 5),
        "synthetic_diversity": round(float(np.nanmean(diversity)), 5),
        "synthetic_ink_ratio": round(float(np.mean(ink(images) / ex_ink[own_syn])), 5),
        "real_ink_ratio": round(float(np.mean(ink(dataset.images[real_idx]) / ex_ink[own_real])), 5),
    }


def fixed_support_episodes(dataset: FewShotSet, exemplar_idx: np.ndarray, n_way: int, n_episodes: int,
                           seed: int) -> Episodes:
    """N-way episodes over the classes of `exemplar_idx` whose support is always that exemplar.

    The query is another image of the class, as in the headline protocol; only the support is
    fixed, so that an exemplar's synthetic drawings can join it as a prototype.
    """
    fixed = np.full(len(dataset.class_role), -1, dtype=np.int64)
    fixed[dataset.labels[exemplar_idx]] = exemplar_idx
    return sample_episodes(dataset.labels, dataset.labels[exemplar_idx], n_way, n_episodes,
                           np.random.default_rng([seed, 1]), fixed_support=fixed,
                           name=f"{n_way}-way episodes with a fixed novel-class exemplar as support")


def synthetic_support(net: SiameseNet, dataset: FewShotSet, embeddings: torch.Tensor, episodes: Episodes,
                      exemplar_idx: np.ndarray, images: np.ndarray, labels: np.ndarray, key: str) -> dict[str, float]:
    """Accuracy on fixed-exemplar episodes with the exemplar alone vs exemplar + synthetic prototypes, paired.

    images, labels: the generator's synthetic drawings of the novel exemplars (uint8 [M, C, S, S], class [M]).
    The prototype is the classifier's own: the mean embedding of the exemplar and its drawings.
    """
    if len(images) == 0:
        return {}
    exemplar_of_class = {int(c): int(i) for c, i in zip(dataset.labels[exemplar_idx], exemplar_idx, strict=True)}
    owner = np.array([exemplar_of_class[int(c)] for c in labels], dtype=np.int64)
    extra = (embed_all(net, to_tensor(images)), owner)
    alone = episode_accuracy(episode_scores(net, embeddings, episodes))
    joined = episode_accuracy(episode_scores(net, embeddings, episodes, extra_support=extra))
    m: dict[str, float] = {}
    m[f"acc_{key}_exemplar"], m[f"acc_{key}_exemplar_ci95"] = mean_ci95(alone)
    m[f"acc_{key}_prototype"], m[f"acc_{key}_prototype_ci95"] = mean_ci95(joined)
    m[f"delta_{key}_prototype_vs_exemplar"], m[f"delta_{key}_prototype_vs_exemplar_ci95"] = mean_ci95(joined - alone)
    return {k: round(v, 5) for k, v in m.items()}
