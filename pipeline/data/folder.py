"""The user's own images: a folder (or .zip) of class folders, read into a `FewShotSet`.

Two layouts, the ones torchvision's `ImageFolder` and Hugging Face's `imagefolder` read, and one
level more:

    root/<class>/<image>            every class is its own group (the role rule then splits classes)
    root/<group>/<class>/<image>    classes in groups (an alphabet, a font family, a product line)

`root` is `data.path` (a folder or a .zip), or its subfolder `data.subdir`. Any format and size
Pillow reads, grayscale or RGB (converted to `data.channels`). Each image's instance key is its
file stem, so files named alike across classes (the same drawer, font or camera) share one. Hidden
entries (`.DS_Store`, `.git`, `__MACOSX`) are skipped; anything else out of place is an error.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline.data.fewshot import DataError, FewShotSet, assign_exemplars, assign_roles, read_split_file
from pipeline.data.images import preprocess_image
from pipeline.data.prepare import DataConfig, resolve

LAYOUTS = "root/<class>/<image> or root/<group>/<class>/<image>"


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


class _Tree:
    """A read-only view of a folder or a zip: children of a path, and a file's bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.archive: zipfile.ZipFile | None = None
        self.children: dict[PurePosixPath, dict[str, bool]] = {}  # folder -> {name: is_folder}
        self.members: dict[PurePosixPath, str] = {}  # normalised path -> the zip's own member name
        if path.is_dir():
            return
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"data.path: {path} is neither a folder nor a readable .zip ({exc})") from exc
        self.children[PurePosixPath()] = {}
        for name in self.archive.namelist():
            parts = PurePosixPath(name).parts
            self.members[PurePosixPath(name)] = name
            for depth in range(len(parts)):
                parent = PurePosixPath(*parts[:depth])
                is_folder = depth < len(parts) - 1 or name.endswith("/")
                self.children.setdefault(parent, {})
                self.children[parent][parts[depth]] = self.children[parent].get(parts[depth], False) or is_folder
                if is_folder:
                    self.children.setdefault(PurePosixPath(*parts[:depth + 1]), {})

    def where(self, rel: PurePosixPath) -> str:
        if rel == PurePosixPath():
            return str(self.path)
        return f"{self.path}/{rel}" if self.archive is None else f"{self.path}:{rel}"

    def list(self, rel: PurePosixPath) -> list[tuple[str, bool]]:
        """Visible (name, is_folder) entries of folder `rel`, sorted by name."""
        if self.archive is None:
            folder = self.path / rel
            if not folder.is_dir():
                raise DataError(f"{self.where(rel)}: no such folder")
            entries = [(p.name, p.is_dir()) for p in folder.iterdir()]
        else:
            if rel not in self.children:
                raise DataError(f"{self.where(rel)}: no such folder in the zip")
            entries = list(self.children[rel].items())
        return sorted((name, is_dir) for name, is_dir in entries if not _hidden(name))

    def read(self, rel: PurePosixPath) -> bytes:
        if self.archive is None:
            return (self.path / rel).read_bytes()
        return self.archive.read(self.members[rel])

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()


def list_classes(tree: _Tree, root: PurePosixPath) -> tuple[str, list[tuple[str, str, list[PurePosixPath]]]]:
    """The layout and, in order, (group, class name, image files) of every class under `root`."""
    entries = tree.list(root)
    if not entries:
        raise DataError(f"{tree.where(root)}: empty folder; expected class folders ({LAYOUTS})")
    files = [name for name, is_dir in entries if not is_dir]
    if files:
        raise DataError(f"{tree.where(root / files[0])}: a file where a class folder is expected ({LAYOUTS}); "
                        "move it out of the data folder, or point data.subdir at the folder of class folders")
    first = tree.list(root / entries[0][0])
    grouped = bool(first) and all(is_dir for _, is_dir in first)
    if len(entries) == 1 and grouped and all(tree.list(root / entries[0][0] / name) and all(
            is_dir for _, is_dir in tree.list(root / entries[0][0] / name)) for name, _ in first):
        raise DataError(f"{tree.where(root)}: holds one folder, {entries[0][0]!r}, of group folders; point "
                        f"data.subdir at it (data.subdir: {(root / entries[0][0]).as_posix()})")
    classes = []
    for group, _ in entries:
        if not grouped:
            classes.append((group, group, root / group))
            continue
        members = tree.list(root / group)
        if not members:
            raise DataError(f"{tree.where(root / group)}: empty group folder; expected class folders ({LAYOUTS})")
        loose = [name for name, is_dir in members if not is_dir]
        if loose:
            raise DataError(f"{tree.where(root / group / loose[0])}: a file where a class folder is expected "
                            f"(the layout is {LAYOUTS}, and {tree.where(root / entries[0][0])} holds class folders)")
        classes += [(group, f"{group}/{name}", root / group / name) for name, _ in members]
    out = []
    for group, name, folder in classes:
        images = tree.list(folder)
        if not images:
            raise DataError(f"{tree.where(folder)}: class folder {name!r} holds no images")
        nested = [n for n, is_dir in images if is_dir]
        if nested:
            raise DataError(f"{tree.where(folder / nested[0])}: a folder inside class folder {name!r}; a class "
                            f"folder holds image files ({LAYOUTS})")
        out.append((group, name, [folder / n for n, _ in images]))
    return ("grouped" if grouped else "flat"), out


def source_digest(tree: _Tree) -> str:
    """sha256 of the zip, or of a folder's file names and sizes (cheap, and changes when the data does)."""
    if tree.archive is not None:
        with tree.path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    digest = hashlib.sha256()
    for p in sorted(tree.path.rglob("*")):
        if p.is_file():
            digest.update(f"{p.relative_to(tree.path)}\0{p.stat().st_size}\0".encode())
    return digest.hexdigest()


def load(cfg: DataConfig) -> tuple[FewShotSet, dict[str, Any]]:
    """Read `data.path` (`data.subdir` inside it) into a `FewShotSet` with roles and exemplars."""
    if cfg.path is None:
        raise DataError("data.path is unset; point it at the folder or .zip of class folders")
    path = resolve(cfg.path)
    if not path.exists():
        raise DataError(f"data.path: {path} not found; point it at a folder or .zip of class folders ({LAYOUTS})")
    tree = _Tree(path)
    try:
        root = PurePosixPath(cfg.subdir) if cfg.subdir else PurePosixPath()
        layout, classes = list_classes(tree, root)
        if cfg.max_classes_per_group is not None:
            kept: dict[str, int] = {}
            trimmed = []
            for group, name, files in classes:
                kept[group] = kept.get(group, 0) + 1
                if kept[group] <= cfg.max_classes_per_group:
                    trimmed.append((group, name, files))
            classes = trimmed
        files = [f for _, _, fs in classes for f in fs]
        labels = np.concatenate([np.full(len(fs), c, dtype=np.int64) for c, (_, _, fs) in enumerate(classes)])
        stems = [f.stem for f in files]
        instance_names, instances = np.unique(np.asarray(stems), return_inverse=True)
        images = np.empty((len(files), cfg.channels, cfg.image_size, cfg.image_size), dtype=np.uint8)
        for i, f in enumerate(tqdm(files, desc=f"decode {path.name}", unit="img", mininterval=1.0)):
            try:
                with Image.open(io.BytesIO(tree.read(f))) as image:
                    image.load()
                    images[i] = preprocess_image(image, cfg.spec)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError,
                    zipfile.BadZipFile) as exc:
                raise DataError(f"{tree.where(f)}: not a readable image ({exc}); remove or replace it") from exc
        digest = source_digest(tree)
    finally:
        tree.close()

    class_names = [name for _, name, _ in classes]
    class_group = [group for group, _, _ in classes]
    if cfg.split_file is not None:
        split_path = resolve(cfg.split_file)
        named = read_split_file(split_path, class_names, class_group)
        role = [named[c] for c in class_names]
    else:
        by_group = assign_roles(sorted(set(class_group)), cfg.roles, cfg.split_seed, rest=cfg.rest)
        role = [by_group[g] for g in class_group]
    class_role = np.asarray(role)
    dataset = FewShotSet(
        images=images, labels=labels, instances=instances.astype(np.int64), instance_names=instance_names,
        class_names=np.asarray(class_names), class_group=np.asarray(class_group), class_role=class_role,
        exemplar=assign_exemplars(labels, class_role, cfg.exemplar_seed), inverted=cfg.invert)
    manifest = {"path": str(path), "subdir": cfg.subdir, "layout": layout, "sha256": digest,
                "split": str(resolve(cfg.split_file)) if cfg.split_file else {"roles": cfg.roles,
                                                                                "seed": cfg.split_seed,
                                                                                "rest": cfg.rest},
                "classes": len(class_names), "images": len(files)}
    return dataset, manifest
