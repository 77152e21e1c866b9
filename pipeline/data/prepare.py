"""`data` params and the sources: one param (`data.source`) picks the loader, every loader gives a `FewShotSet`.

    data.source: omniglot   the official Omniglot zips (data.path, else OMNIGLOT_DIR, else data.local_dir/download)
    data.source: folder     the user's own images: root/<class>/<image> or root/<group>/<class>/<image>,
                            in a folder or a .zip

A new source is one module with a `load(cfg) -> (FewShotSet, manifest)` and one entry in `SOURCES`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pipeline.config import _check, positive
from pipeline.data.fewshot import ROLES, FewShotSet, check_roles, role_summary
from pipeline.data.images import ImageSpec

# The smallest input the networks take: the Siamese network halves the side four times (16 -> 1).
MIN_IMAGE_SIZE = 16


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    base_url: str
    md5: dict[str, str]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: Literal["omniglot", "folder"] = "omniglot"
    # omniglot: the folder holding the two zips (null: OMNIGLOT_DIR, else local_dir, else download there);
    # folder: the root folder or .zip of class folders. Relative paths are relative to the project root.
    path: str | None = None
    subdir: str | None = None  # folder: the folder inside `path` that holds the class folders (e.g. `kanji`)
    image_size: int = 28
    channels: int = 1  # 1: grayscale, 3: RGB; images of the other kind are converted
    invert: bool = True  # dark-on-light drawings: invert so that strokes are the foreground
    # The seeded rule over groups: in a seeded order, this many groups to each role in turn (null: every group
    # left); the groups left over are novel. Omniglot's pool is its background alphabets (its evaluation
    # alphabets are always novel). Ignored when split_file is given.
    # `calibration` (optional): classes no generator or classifier sees, for the verification threshold.
    roles: dict[str, int | None] = dataclasses.field(
        default_factory=lambda: {"source": 20, "calibration": 2, "train": None})
    rest: str = "novel"  # the role of the groups the rule leaves over: novel, or unused (left out of every protocol)
    split_file: str | None = None  # CSV `class,role` or `group,role`, instead of the rule
    split_seed: int = 0  # the rule's seed: which groups get which role
    exemplar_seed: int = 0  # which image of each one-shot class is its single exemplar
    max_classes_per_group: int | None = None  # quick profiles keep only the first K classes of each group
    local_dir: str = "data/raw/omniglot"  # omniglot: where the zips are looked for, or downloaded to
    download: DownloadConfig | None = None  # omniglot: where to download the zips from, and their MD5s

    def validate(self, key: str) -> None:
        _check(self.image_size >= MIN_IMAGE_SIZE and self.image_size % 4 == 0, f"{key}.image_size", self.image_size,
               f"a multiple of 4, at least {MIN_IMAGE_SIZE} (the Siamese network halves the side four times, "
               "the generators twice)")
        _check(self.channels in (1, 3), f"{key}.channels", self.channels, "1 (grayscale) or 3 (RGB)")
        ruled = [r for r in ROLES if r not in ("novel", "unused")]
        _check(set(self.roles) <= set(ruled) and "source" in self.roles and "train" in self.roles,
               f"{key}.roles", self.roles,
               f"a mapping with `source` and `train` (of {', '.join(ruled)}) to a group count or null; the groups "
               "left over get `data.rest`")
        _check(self.rest in ("novel", "unused"), f"{key}.rest", self.rest,
               "novel (the groups the rule leaves over are evaluated) or unused (they are left out)")
        _check(sum(v is None for v in self.roles.values()) <= 1 and all(v is None or v >= 1
                                                                        for v in self.roles.values()),
               f"{key}.roles", self.roles, "counts >= 1, at most one of them null (the rest)")
        _check(self.source != "folder" or self.path is not None, f"{key}.path", self.path,
               "the class folder or .zip to read when data.source is folder")
        positive(key, max_classes_per_group=self.max_classes_per_group)

    @property
    def spec(self) -> ImageSpec:
        return ImageSpec(self.image_size, self.channels, self.invert)


def resolve(path: str, root: Path | None = None) -> Path:
    """A params path as the user meant it: `~` and environment variables expanded, relative to the project root.

    The project root (DVC_ROOT while DVC runs a stage) is the folder of params.yaml, also for `dvc exp run`
    copies under .dvc/tmp: a relative path keeps pointing at the user's data.
    """
    from pipeline.tracking import project_root

    p = Path(os.path.expandvars(os.path.expanduser(path)))
    return p if p.is_absolute() else (root or project_root()) / p


def _load_omniglot(cfg: DataConfig) -> tuple[FewShotSet, dict[str, Any]]:
    from pipeline.data import omniglot

    return omniglot.load(cfg)


def _load_folder(cfg: DataConfig) -> tuple[FewShotSet, dict[str, Any]]:
    from pipeline.data import folder

    return folder.load(cfg)


SOURCES: dict[str, Callable[[DataConfig], tuple[FewShotSet, dict[str, Any]]]] = {
    "omniglot": _load_omniglot,
    "folder": _load_folder,
}


def prepare_dataset(cfg: DataConfig) -> tuple[FewShotSet, dict[str, Any]]:
    """Load the configured source, check the split, and describe it: (set, manifest)."""
    dataset, manifest = SOURCES[cfg.source](cfg)
    check_roles(dataset, manifest.get("path", cfg.source))
    manifest = {"source": cfg.source, "image_size": dataset.image_size, "channels": dataset.channels,
                "inverted": dataset.inverted, **manifest, "roles": role_summary(dataset),
                "exemplars": {str(dataset.class_names[c]): str(dataset.instance_names[dataset.instances[i]])
                              for c, i in zip(dataset.classes("train"), dataset.exemplar_indices(), strict=True)}}
    return dataset, manifest
