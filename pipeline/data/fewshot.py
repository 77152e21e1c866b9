"""`FewShotSet`: every image of a dataset decoded once, whatever its source, with what a protocol needs.

Per image: its class and an instance key where the source has one (Omniglot: the drawer; a font
for printed glyphs; for a plain class folder, the file's stem). Per class: a name, a group (an
Omniglot alphabet, a folder of classes) and a role:

- `source`: the many-example classes; the generators train on them, and so do the classifier
  variants that list them among their training sources;
- `calibration`: never seen by a generator or a classifier: what must be judged on unseen
  classes without touching the evaluation's (the verification threshold of `oneshot-gda verify`);
- `train`: the one-shot classes; a classifier sees one seeded exemplar image of each, the others
  are held out (the seen-class protocol queries them);
- `novel`: never seen by a generator or a classifier: the headline protocol's classes;
- `unused`: left out of every protocol (`data.rest: unused`: the groups the rule leaves over).

Roles come from a split file or from a seeded rule over groups (`assign_roles`); exemplars from a
seeded rule over each one-shot class's images (`assign_exemplars`). Nothing here knows any source.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.data.images import ImageSpec
from pipeline.io import write_npz

ROLES = ("source", "calibration", "train", "novel", "unused")
# Fewest images a class of each role must have: a same-class pair, a same-class pair, an exemplar
# and a held-out query, a support and a query.
MIN_IMAGES = {"source": 2, "calibration": 2, "train": 2, "novel": 2, "unused": 0}
# Roles a split may leave empty (a stage that needs one says so, naming the param to set).
OPTIONAL_ROLES = ("calibration", "unused")


class DataError(ValueError):
    """The data is missing, corrupt, or cannot give what the protocol needs."""


@dataclasses.dataclass(frozen=True)
class FewShotSet:
    """Images [N, C, S, S] uint8 (foreground 255 when `inverted`), and the tables that describe them."""

    images: np.ndarray  # [N, C, S, S] uint8
    labels: np.ndarray  # [N] int64: class index into the class tables
    instances: np.ndarray  # [N] int64: index into instance_names (who drew it, which font, which file stem)
    instance_names: np.ndarray  # [K] str
    class_names: np.ndarray  # [C] str, unique
    class_group: np.ndarray  # [C] str
    class_role: np.ndarray  # [C] str, one of ROLES
    exemplar: np.ndarray  # [C] int64: image index of a `train` class's one-shot exemplar, -1 for other roles
    inverted: bool = True  # the images were inverted at preparation (dark-on-light drawings)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def spec(self) -> ImageSpec:
        """How these images were preprocessed; a model trained on them reads new images the same way."""
        return ImageSpec(self.image_size, self.channels, self.inverted)

    def classes(self, role: str) -> np.ndarray:
        """Class indices with `role`, in class order."""
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        return np.flatnonzero(self.class_role == role)

    def indices(self, role: str) -> np.ndarray:
        """Image indices of every image of the classes with `role`."""
        return np.flatnonzero(np.isin(self.labels, self.classes(role)))

    def exemplar_indices(self) -> np.ndarray:
        """Image index of the single exemplar of each `train` class, in class order."""
        return self.exemplar[self.classes("train")]

    def group_ids(self) -> np.ndarray:
        """[C] int: each class's group as an integer (groups in name order)."""
        return np.unique(self.class_group, return_inverse=True)[1]

    def save(self, path: str | Path) -> None:
        """Write an .npz whose bytes depend only on the contents (no time stamps), so a rerun with
        the same inputs gives the same file and DVC reruns nothing after it."""
        write_npz(path, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def load(cls, path: str | Path) -> FewShotSet:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: prepared data not found; run `dvc repro prepare` first")
        try:
            with np.load(path, allow_pickle=False) as data:
                values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a prepared dataset of this pipeline ({exc}); run `dvc repro prepare`") \
                from exc
        values["inverted"] = bool(values["inverted"])
        return cls(**values)


def assign_roles(groups: Sequence[str], rule: Mapping[str, int | None], seed: int,
                 rest: str = "novel") -> dict[str, str]:
    """The seeded rule: groups in a seeded order, the first `rule[role]` of them to each role in
    the rule's order (None: every group left), the groups left over to `rest`.

    groups: the pool's group names (sorted here, so the listing order does not matter).
    """
    pool = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(pool))
    roles: dict[str, str] = {}
    start = 0
    for role, count in rule.items():
        end = len(pool) if count is None else start + count
        if end == start:
            raise DataError(f"data.roles: no group is left for `{role}` ({len(pool)} groups: "
                            f"{', '.join(f'{r}: {c}' for r, c in rule.items())}); lower the other counts")
        if end > len(pool):
            raise DataError(f"data.roles asks for {sum(c or 0 for c in rule.values())} groups "
                            f"({', '.join(f'{r}: {c}' for r, c in rule.items())}), but there are only {len(pool)}; "
                            "lower the counts")
        for i in order[start:end]:
            roles[pool[i]] = role
        start = end
    for i in order[start:]:
        roles[pool[i]] = rest
    return roles


def read_split_file(path: Path, class_names: Sequence[str], groups: Sequence[str]) -> dict[str, str]:
    """Class name -> role from a CSV split file with the header `class,role` or `group,role`.

    Every class must get a role; a name the data does not have, a role not in ROLES or a class
    left without a role is a DataError naming the file, the line and the fix.
    """
    import csv

    if not path.is_file():
        raise DataError(f"data.split_file: {path} not found; give a CSV with the header `class,role` or `group,role`")
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
        rows = list(csv.reader(fh))
    header = [h.strip() for h in rows[0]] if rows else []
    if header not in (["class", "role"], ["group", "role"]):
        raise DataError(f"{path}: the first line must be `class,role` or `group,role`, not {','.join(header)!r}")
    key = header[0]
    known = set(class_names) if key == "class" else set(groups)
    named: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise DataError(f"{path}:{line}: expected `{key},role`, got {','.join(row)!r}")
        name, role = row[0].strip(), row[1].strip()
        if name not in known:
            raise DataError(f"{path}:{line}: unknown {key} {name!r}; the data has {len(known)} {key}s, "
                            f"e.g. {', '.join(sorted(known)[:3])}")
        if role not in ROLES:
            raise DataError(f"{path}:{line}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        if name in named:
            raise DataError(f"{path}:{line}: {key} {name!r} is named a second time; give each {key} one role")
        named[name] = role
    if key == "group":
        named = {c: named[g] for c, g in zip(class_names, groups, strict=True) if g in named}
    missing = [c for c in class_names if c not in named]
    if missing:
        raise DataError(f"{path}: {len(missing)} classes have no role (e.g. {missing[0]!r}); "
                        f"give every {key} a role ({', '.join(ROLES)})")
    return named


def assign_exemplars(labels: np.ndarray, class_role: np.ndarray, seed: int) -> np.ndarray:
    """[C] image index of each `train` class's one-shot exemplar (-1 for other roles).

    Classes in order; for each `train` class one of its images (in image order) drawn from a
    generator seeded with `seed`.
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(len(class_role)))
    ends = np.searchsorted(labels[order], np.arange(len(class_role)), side="right")
    exemplar = np.full(len(class_role), -1, dtype=np.int64)
    for c in np.flatnonzero(class_role == "train"):
        exemplar[c] = order[starts[c] + int(rng.integers(ends[c] - starts[c]))]
    return exemplar


def check_roles(dataset: FewShotSet, where: str) -> None:
    """What every protocol needs of a split: each role has classes, each class enough images for its role.

    `where` names the data in the message (a path). The episode-level needs (N-way against the
    classes of a role) are checked where the episodes are drawn, naming their params.
    """
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    for role in ROLES:
        classes = dataset.classes(role)
        if role in OPTIONAL_ROLES and len(classes) == 0:
            continue
        if len(classes) < 2:
            raise DataError(f"{where}: the split gives {len(classes)} {role} class(es); a protocol needs at least 2 "
                            "(change data.roles or data.split_file)")
        short = classes[counts[classes] < MIN_IMAGES[role]]
        if len(short):
            c = short[0]
            name = str(dataset.class_names[c])
            raise DataError(f"{where}: class {name!r} ({role}) has {counts[c]} image(s); a {role} class needs at "
                            f"least {MIN_IMAGES[role]}. Add images, or drop the class")


def role_summary(dataset: FewShotSet) -> dict[str, dict[str, object]]:
    """Per role: its groups, and how many classes and images it has (for the manifest); an optional
    role the split leaves empty is not listed."""
    return {role: {"groups": sorted(set(dataset.class_group[dataset.classes(role)].tolist())),
                   "classes": len(dataset.classes(role)), "images": len(dataset.indices(role))} for role in ROLES
            if role not in OPTIONAL_ROLES or len(dataset.classes(role))}
