"""Synthesis: from each one-shot exemplar, N new drawings by a trained generator; and the sample grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.config import _check
from pipeline.data import OmniglotSet, to_tensor


def novel_exemplars(dataset: OmniglotSet, n_classes: int | None, seed: int) -> np.ndarray:
    """Image index of one seeded exemplar drawing for each of `n_classes` novel classes (all when None).

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


@torch.no_grad()
def synthesize_from_exemplars(model: torch.nn.Module, exemplars: np.ndarray, n_per_exemplar: int,
                              generator: torch.Generator, temperature: float = 1.0,
                              batch_size: int = 256) -> np.ndarray:
    """uint8 exemplars [C, S, S] -> uint8 synthetic drawings [C, n, S, S] (strokes 255)."""
    if n_per_exemplar < 0:
        raise ValueError(f"n_per_exemplar={n_per_exemplar}; expected a count >= 0")
    c, s = len(exemplars), exemplars.shape[-1]
    out = np.empty((c, n_per_exemplar, s, s), dtype=np.uint8)
    if n_per_exemplar == 0 or c == 0:
        return out
    model.eval()
    for start in range(0, c, batch_size):
        x = to_tensor(exemplars[start:start + batch_size])
        drawn = model.generate(x, n_per_exemplar, generator=generator, temperature=temperature)  # type: ignore[operator]
        out[start:start + batch_size] = (drawn.squeeze(2).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return out


def sample_grid(rows: list[tuple[str, np.ndarray, np.ndarray]], scale: int = 3) -> Image.Image:
    """A picture of labelled rows: the exemplar, a gap, then its synthetic drawings.

    rows: (label, exemplar uint8 [S, S], synthetic uint8 [n, S, S]); drawn dark on light.
    """
    if not rows:
        raise ValueError("sample_grid needs at least one row")
    s = rows[0][1].shape[-1]
    n = max(len(r[2]) for r in rows)
    label_w, gap = 150, 6
    width = label_w + (s + 2) * (n + 1) + gap
    canvas = Image.new("L", (width, (s + 2) * len(rows)), 255)
    draw = ImageDraw.Draw(canvas)
    for r, (label, exemplar, synthetic) in enumerate(rows):
        y = r * (s + 2) + 1
        draw.text((2, y + s // 2 - 5), label[:24], fill=0)
        canvas.paste(Image.fromarray(255 - exemplar), (label_w, y))
        for k, img in enumerate(synthetic):
            canvas.paste(Image.fromarray(255 - img), (label_w + gap + (s + 2) * (k + 1), y))
    draw.line([(label_w + s + gap // 2 + 1, 0), (label_w + s + gap // 2 + 1, canvas.height)], fill=128)
    return canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)
