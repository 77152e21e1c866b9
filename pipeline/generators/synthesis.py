"""The sampling procedure: from each exemplar, N new drawings by a trained generator; and the sample grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.config import _check
from pipeline.data.fewshot import FewShotSet
from pipeline.data.images import to_display, to_tensor
from pipeline.data.synthetic import SyntheticSet


def novel_exemplars(dataset: FewShotSet, n_classes: int | None, seed: int) -> np.ndarray:
    """Image index of one seeded exemplar image for each of `n_classes` novel classes (all when None).

    Every generator draws from the same exemplars, so their measures and prototypes are paired.
    """
    rng = np.random.default_rng(seed)
    novel = dataset.classes("novel")
    if n_classes is not None and n_classes < len(novel):
        novel = np.sort(rng.choice(novel, size=n_classes, replace=False))
    return np.array([rng.choice(np.flatnonzero(dataset.labels == c)) for c in novel], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    n_per_exemplar: int = 20
    temperature: float = 1.0  # z ~ N(0, temperature^2 I) for generators with a latent prior
    n_novel_classes: int | None = None  # novel classes drawn for the measures and prototypes; None = all
    grid_rows: int = 6  # rows per kind (training class, novel class) in the sample grid
    grid_columns: int = 10
    seed: int = 0

    def validate(self, key: str) -> None:
        for name in ("n_per_exemplar", "grid_rows", "grid_columns"):
            value = getattr(self, name)
            _check(value >= 0, f"{key}.{name}", value, "a count >= 0")
        _check(self.n_novel_classes is None or self.n_novel_classes >= 2, f"{key}.n_novel_classes",
               self.n_novel_classes, "null (every novel class) or a count >= 2")
        _check(self.temperature > 0, f"{key}.temperature", self.temperature, "a number > 0")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Accuracy against the number of synthetic drawings per exemplar, for each generator."""

    counts: tuple[int, ...] = (0, 5, 10, 20, 50)

    def validate(self, key: str) -> None:
        _check(len(self.counts) > 0 and all(n >= 0 for n in self.counts)
               and list(self.counts) == sorted(set(self.counts)), f"{key}.counts", self.counts,
               "a non-empty increasing list of counts >= 0")

    def drawn_per_exemplar(self, n_per_exemplar: int) -> int:
        """Synthetic drawings made per training exemplar: enough for the variants and every sweep point."""
        return max(n_per_exemplar, *self.counts)


@torch.no_grad()
def synthesize_from_exemplars(model: torch.nn.Module, exemplars: np.ndarray, n_per_exemplar: int,
                              generator: torch.Generator, temperature: float = 1.0,
                              batch_size: int = 256) -> np.ndarray:
    """uint8 exemplars [E, C, S, S] -> uint8 synthetic drawings [E, n, C, S, S] (foreground 255)."""
    if n_per_exemplar < 0:
        raise ValueError(f"n_per_exemplar={n_per_exemplar}; expected a count >= 0")
    c = len(exemplars)
    out = np.empty((c, n_per_exemplar, *exemplars.shape[1:]), dtype=np.uint8)
    if n_per_exemplar == 0 or c == 0:
        return out
    model.eval()
    for start in range(0, c, batch_size):
        x = to_tensor(exemplars[start:start + batch_size])
        drawn = model.generate(x, n_per_exemplar, generator=generator, temperature=temperature)  # type: ignore[operator]
        out[start:start + batch_size] = (drawn.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return out


def sample_grid(rows: list[tuple[str, np.ndarray, np.ndarray]], scale: int = 3, inverted: bool = True) -> Image.Image:
    """A picture of labelled rows: the exemplar, a gap, then its synthetic drawings.

    rows: (label, exemplar uint8 [C, S, S], synthetic uint8 [n, C, S, S]); inverted images (strokes
    255) are drawn dark on light again.
    """
    if not rows:
        raise ValueError("sample_grid needs at least one row")
    s = rows[0][1].shape[-1]
    n = max(len(r[2]) for r in rows)
    label_w, gap = 150, 6
    width = label_w + (s + 2) * (n + 1) + gap
    canvas = Image.new("RGB" if rows[0][1].shape[0] == 3 else "L", (width, (s + 2) * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, exemplar, synthetic) in enumerate(rows):
        y = r * (s + 2) + 1
        draw.text((2, y + s // 2 - 5), label[:24], fill="black")
        canvas.paste(to_display(exemplar, inverted), (label_w, y))
        for k, img in enumerate(synthetic):
            canvas.paste(to_display(img, inverted), (label_w + gap + (s + 2) * (k + 1), y))
    draw.line([(label_w + s + gap // 2 + 1, 0), (label_w + s + gap // 2 + 1, canvas.height)], fill="grey")
    return canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)


@dataclasses.dataclass(frozen=True)
class Synthesized:
    """What `synthesize` writes: the one-shot classes' set, and the novel exemplars' drawings (for the measures)."""

    train: SyntheticSet  # max(n_per_exemplar, sweep counts) drawings per one-shot exemplar
    novel_exemplars: np.ndarray  # [K] image index of each novel exemplar
    novel_images: np.ndarray  # [K * n, C, S, S] uint8, n = n_per_exemplar, exemplar k's at rows k * n ...
    novel_labels: np.ndarray  # [K * n] class of each

    def grid_rows(self, dataset: FewShotSet, cfg: SynthesisConfig) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Sample-grid rows spread over the classes (and so over the groups): training classes, then novel."""
        n_train = self.train.info["n_per_exemplar"]
        rows = []
        for kind, ex_idx, images, n in (("train", dataset.exemplar_indices(), self.train.images, n_train),
                                        ("novel", self.novel_exemplars, self.novel_images, cfg.n_per_exemplar)):
            for k in np.unique(np.linspace(0, len(ex_idx) - 1, min(cfg.grid_rows, len(ex_idx))).astype(int)):
                label = f"{kind}: {dataset.class_group[dataset.labels[ex_idx[k]]]}"
                rows.append((label, dataset.images[ex_idx[k]], images[k * n:k * n + min(n, cfg.grid_columns)]))
        return rows


def synthesize(model: torch.nn.Module, family: str, dataset: FewShotSet, cfg: SynthesisConfig,
               n_train: int) -> Synthesized:
    """`n_train` drawings per one-shot exemplar, and `cfg.n_per_exemplar` per seeded novel exemplar,
    from one generator seeded with `cfg.seed` (training classes first)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    train_classes = dataset.classes("train")
    exemplars = dataset.images[dataset.exemplar_indices()]
    drawn = synthesize_from_exemplars(model, exemplars, n_train, generator, cfg.temperature)
    novel_idx = novel_exemplars(dataset, cfg.n_novel_classes, cfg.seed)
    novel_drawn = synthesize_from_exemplars(model, dataset.images[novel_idx], cfg.n_per_exemplar, generator,
                                            cfg.temperature)
    train = SyntheticSet(
        images=drawn.reshape(-1, *exemplars.shape[1:]),
        labels=np.repeat(train_classes, n_train),
        generator=family,
        # The variants train on the first `variant_count` drawings of each class (the rest are the
        # sweep's): recorded here, so that train_classifier reads it from the set, not from params,
        # and a new count reruns only the classifiers whose set changed.
        info={"n_per_exemplar": n_train, "variant_count": cfg.n_per_exemplar, "temperature": cfg.temperature,
              "seed": cfg.seed, "classes": len(train_classes)},
    )
    return Synthesized(train=train, novel_exemplars=novel_idx,
                       novel_images=novel_drawn.reshape(-1, *exemplars.shape[1:]),
                       novel_labels=np.repeat(dataset.labels[novel_idx], cfg.n_per_exemplar))
