"""A set of synthetic drawings: what the synthesis stage writes and the classifier stage reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import read_json, write_json, write_npz


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
    images: np.ndarray  # [M, C, S, S] uint8, foreground 255
    labels: np.ndarray  # [M] class index into the prepared dataset's class table
    generator: str  # the family that drew them, "none" for the empty set
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        write_npz(folder / "synthetic.npz", images=self.images, labels=self.labels)
        write_json(folder / "manifest.json", {"generator": self.generator, "count": len(self.images), **self.info})

    @classmethod
    def load(cls, folder: str | Path) -> SyntheticSet:
        folder = Path(folder)
        manifest = read_json(folder / "manifest.json")
        with np.load(folder / "synthetic.npz") as data:
            return cls(images=data["images"], labels=data["labels"], generator=manifest.pop("generator"),
                       info=manifest)

    @property
    def variant_count(self) -> int | None:
        """Synthetic drawings per class the variants train on (`synthesis.n_per_exemplar` when drawn); None: all."""
        count = self.info.get("variant_count")
        return None if count is None else int(count)

    def for_class(self, c: int, n: int | None = None) -> np.ndarray:
        """The first `n` (all when None) synthetic drawings of class c, in the order they were drawn."""
        drawn = self.images[self.labels == c]
        if n is not None and self.generator != "none" and n > len(drawn):
            raise ValueError(f"{n} synthetic drawings of class {c} were asked for, the {self.generator!r} set holds "
                             f"{len(drawn)}; raise synthesis.n_per_exemplar or sweep.counts and rerun synthesize")
        return drawn if n is None else drawn[:n]
