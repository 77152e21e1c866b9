"""Omniglot, one source of a `FewShotSet`: find or download the official zips, decode every drawing once.

Classes are characters (`<Alphabet>/characterNN`), groups their alphabets, instances the 20
drawers. The seeded rule (`data.roles`) splits the 30 background alphabets into source and
one-shot training classes; the 20 evaluation alphabets are the novel classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline.data.fewshot import DataError, FewShotSet, assign_exemplars, assign_roles
from pipeline.data.images import ImageSpec, preprocess_image
from pipeline.data.prepare import DataConfig, DownloadConfig, resolve

SPLITS = ("images_background", "images_evaluation")
DRAWERS = 20
_MEMBER = re.compile(r"^(images_background|images_evaluation)/([^/]+)/(character\d+)/(\d{4})_(\d{2})\.png$")


# ---------------------------------------------------------------------------- locating the zips


def file_hash(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, e.g. `file_hash(p, "md5")`."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def download_file(url: str, dest: Path, md5: str) -> None:
    """Download `url` to `dest`, check its MD5, and only then move it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"could not download {url}: {exc}. Set OMNIGLOT_DIR to a folder holding "
            f"{', '.join(s + '.zip' for s in SPLITS)}, or check the network"
        ) from exc
    got = file_hash(partial, "md5")
    if got != md5:
        partial.unlink()
        raise DataError(f"{url}: MD5 {got} does not match the expected {md5}; the download is corrupt or not Omniglot")
    partial.replace(dest)


def _zips_in(folder: Path, what: str) -> dict[str, Path]:
    names = [f"{split}.zip" for split in SPLITS]
    if not folder.is_dir():
        raise DataError(f"{what}={folder} is not a folder; point it at the folder holding {', '.join(names)}")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{what}={folder} has no {', '.join(missing)}; it must hold {', '.join(names)}")
    return {split: folder / f"{split}.zip" for split in SPLITS}


def locate_zips(cfg: DataConfig, env: dict[str, str] | None = None) -> dict[str, Path]:
    """The two split zips: in `data.path`, else `OMNIGLOT_DIR`, else `data.local_dir` (downloaded there if absent)."""
    env = dict(os.environ) if env is None else env
    names = [f"{split}.zip" for split in SPLITS]
    if cfg.path is not None:
        return _zips_in(resolve(cfg.path), "data.path")
    if env.get("OMNIGLOT_DIR"):
        return _zips_in(Path(env["OMNIGLOT_DIR"]).expanduser(), "OMNIGLOT_DIR")
    folder = resolve(cfg.local_dir)
    if all((folder / n).is_file() for n in names):
        return {split: folder / f"{split}.zip" for split in SPLITS}
    if cfg.download is None:
        raise DataError(
            f"data.path and OMNIGLOT_DIR are unset and {folder} does not hold {', '.join(names)}; "
            "set one of them or configure data.download"
        )
    for name in names:
        if not (folder / name).is_file():
            download_from(cfg.download, name, folder / name)
    return {split: folder / f"{split}.zip" for split in SPLITS}


def download_from(download: DownloadConfig, name: str, dest: Path) -> None:
    if name not in download.md5:
        raise DataError(f"params.yaml: `data.download.md5` has no checksum for {name}")
    download_file(f"{download.base_url.rstrip('/')}/{name}", dest, download.md5[name])


# ---------------------------------------------------------------------------- decoding


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    alphabet: str
    character: str
    split: str


def list_zip(path: Path, split: str) -> dict[ClassInfo, list[str]]:
    """Map each character class in a split zip to its 20 member names, in drawer order."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip ({exc})") from exc
    classes: dict[ClassInfo, list[str]] = {}
    with archive:
        for name in archive.namelist():
            if name.endswith("/"):
                continue
            match = _MEMBER.match(name)
            if match is None or match.group(1) != split:
                if name.endswith(".png"):
                    raise DataError(
                        f"{path}: member {name!r} is not in the official layout "
                        f"{split}/<Alphabet>/characterNN/XXXX_YY.png"
                    )
                continue
            info = ClassInfo(match.group(2), match.group(3), split)
            classes.setdefault(info, []).append(name)
    if not classes:
        raise DataError(f"{path}: no drawings in the official layout {split}/<Alphabet>/characterNN/XXXX_YY.png")
    for info, members in classes.items():
        if len(members) != DRAWERS:
            raise DataError(f"{path}: {info.alphabet}/{info.character} has {len(members)} drawings, expected {DRAWERS}")
        members.sort()
    return dict(sorted(classes.items(), key=lambda kv: (kv[0].alphabet, kv[0].character)))


def decode_members(path: Path, members: Iterable[str], spec: ImageSpec, desc: str) -> np.ndarray:
    """Decode zip members to a uint8 array [N, C, S, S]; a corrupt PNG names itself."""
    members = list(members)
    out = np.empty((len(members), spec.channels, spec.size, spec.size), dtype=np.uint8)
    with zipfile.ZipFile(path) as archive:
        for i, name in enumerate(tqdm(members, desc=desc, unit="img", mininterval=1.0)):
            try:
                with Image.open(io.BytesIO(archive.read(name))) as image:
                    image.load()
                    out[i] = preprocess_image(image, spec)
            except (UnidentifiedImageError, OSError, zipfile.BadZipFile, ValueError) as exc:
                raise DataError(f"{path}: {name} is not a readable PNG ({exc}); re-fetch the zip") from exc
    return out


# ---------------------------------------------------------------------------- the set


def prepare_omniglot(zips: dict[str, Path], cfg: DataConfig) -> tuple[FewShotSet, dict[str, Any]]:
    """Decode and split the two zips. Classes in (split, alphabet, character) order, each class's
    20 drawings in drawer order. Returns the set and what the manifest says of the source."""
    listing = {split: list_zip(zips[split], split) for split in SPLITS}
    background = sorted({info.alphabet for info in listing["images_background"]})
    roles = assign_roles(background, cfg.roles, cfg.split_seed, rest=cfg.rest)

    names: list[str] = []
    groups: list[str] = []
    role: list[str] = []
    members: dict[str, list[str]] = {split: [] for split in SPLITS}
    kept_per_alphabet: dict[str, int] = {}
    for split in SPLITS:
        for info, files in listing[split].items():
            kept = kept_per_alphabet.get(info.alphabet, 0)
            if cfg.max_classes_per_group is not None and kept >= cfg.max_classes_per_group:
                continue
            kept_per_alphabet[info.alphabet] = kept + 1
            names.append(f"{info.alphabet}/{info.character}")
            groups.append(info.alphabet)
            role.append(roles.get(info.alphabet, "novel"))
            members[split].extend(files)

    images = np.concatenate([decode_members(zips[s], members[s], cfg.spec, desc=f"decode {s}") for s in SPLITS])
    labels = np.repeat(np.arange(len(names), dtype=np.int64), DRAWERS)
    class_role = np.asarray(role)
    dataset = FewShotSet(
        images=images,
        labels=labels,
        instances=np.tile(np.arange(DRAWERS, dtype=np.int64), len(names)),
        instance_names=np.asarray([f"drawer{d + 1:02d}" for d in range(DRAWERS)]),
        class_names=np.asarray(names),
        class_group=np.asarray(groups),
        class_role=class_role,
        exemplar=assign_exemplars(labels, class_role, cfg.exemplar_seed),
        inverted=cfg.invert,
    )
    manifest = {"zips": {s: {"path": str(p), "sha256": file_hash(p, "sha256")} for s, p in zips.items()}}
    return dataset, manifest


def load(cfg: DataConfig) -> tuple[FewShotSet, dict[str, Any]]:
    """The `omniglot` source: locate (or download) the zips, then decode and split them."""
    zips = locate_zips(cfg)
    dataset, manifest = prepare_omniglot(zips, cfg)
    return dataset, {"path": str(zips["images_background"].parent), **manifest}
