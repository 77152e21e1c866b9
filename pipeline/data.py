"""Omniglot: find or download the official zips, decode every drawing once, split by alphabet.

The prepared dataset is one in-memory `OmniglotSet`: images as uint8 arrays (strokes = 255), a
class index per image, and a class table saying each class's alphabet and role:

- `source`: the generators' training classes (all 20 drawings);
- `train`: the one-shot training classes (one seeded exemplar drawing each; the rest held out);
- `novel`: the evaluation alphabets, never seen by a generator or a classifier.
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

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline.config import DataConfig, DownloadConfig

SPLITS = ("images_background", "images_evaluation")
ROLES = ("source", "train", "novel")
DRAWERS = 20
_MEMBER = re.compile(r"^(images_background|images_evaluation)/([^/]+)/(character\d+)/(\d{4})_(\d{2})\.png$")


class DataError(ValueError):
    """The Omniglot files are missing, corrupt or not in the official layout."""


# ---------------------------------------------------------------------------- preprocessing


def preprocess_image(image: Image.Image, size: int) -> np.ndarray:
    """Turn a dark-on-light drawing of any size or mode into a `size` x `size` uint8 array.

    Strokes become the foreground (255), background 0. The box filter averages the pixels
    each output pixel covers, so thin strokes survive the down-sizing as grey values.
    Transparent pixels count as paper. Used by data preparation and by inference alike.
    """
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        # Dropping alpha would turn a transparent page black (its colour is often 0): lay it on white.
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    gray = image.convert("L").resize((size, size), Image.Resampling.BOX)
    return 255 - np.asarray(gray, dtype=np.uint8)


def load_image_file(path: str | Path, size: int) -> np.ndarray:
    """Read one image file and preprocess it; a non-image names the file."""
    try:
        with Image.open(path) as image:
            return preprocess_image(image, size)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S] (strokes 255) -> float [N, 1, S, S] in 0..1, the networks' input."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


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


def locate_zips(cfg: DataConfig, env: dict[str, str] | None = None) -> dict[str, Path]:
    """Return the two split zips: from `OMNIGLOT_DIR`, else `data.local_dir`, else download there."""
    env = dict(os.environ) if env is None else env
    names = [f"{split}.zip" for split in SPLITS]
    if env.get("OMNIGLOT_DIR"):
        folder = Path(env["OMNIGLOT_DIR"]).expanduser()
        if not folder.is_dir():
            raise DataError(f"OMNIGLOT_DIR={folder} is not a folder; point it at the folder holding {', '.join(names)}")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(f"OMNIGLOT_DIR={folder} has no {', '.join(missing)}; it must hold {', '.join(names)}")
        return {split: folder / f"{split}.zip" for split in SPLITS}
    folder = Path(cfg.local_dir)
    if all((folder / n).is_file() for n in names):
        return {split: folder / f"{split}.zip" for split in SPLITS}
    if cfg.download is None:
        raise DataError(
            f"OMNIGLOT_DIR is unset and {folder} does not hold {', '.join(names)}; "
            "set OMNIGLOT_DIR or configure data.download"
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


def decode_members(path: Path, members: Iterable[str], size: int, desc: str) -> np.ndarray:
    """Decode zip members to a uint8 array [N, size, size]; a corrupt PNG names itself."""
    members = list(members)
    out = np.empty((len(members), size, size), dtype=np.uint8)
    with zipfile.ZipFile(path) as archive:
        for i, name in enumerate(tqdm(members, desc=desc, unit="img", mininterval=1.0)):
            try:
                with Image.open(io.BytesIO(archive.read(name))) as image:
                    image.load()
                    out[i] = preprocess_image(image, size)
            except (UnidentifiedImageError, OSError, zipfile.BadZipFile, ValueError) as exc:
                raise DataError(f"{path}: {name} is not a readable PNG ({exc}); re-fetch the zip") from exc
    return out


# ---------------------------------------------------------------------------- the prepared set


@dataclasses.dataclass(frozen=True)
class OmniglotSet:
    """Every used drawing, decoded once. Images [N, S, S] uint8, strokes 255."""

    images: np.ndarray  # [N, S, S] uint8
    labels: np.ndarray  # [N] int64 class index into the class table
    drawers: np.ndarray  # [N] int64, 0..19
    class_alphabet: np.ndarray  # [C] str
    class_character: np.ndarray  # [C] str
    class_role: np.ndarray  # [C] str, one of ROLES
    exemplar_drawer: np.ndarray  # [C] int64, the one-shot exemplar's drawer for `train` classes, -1 otherwise

    def classes(self, role: str) -> np.ndarray:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        return np.flatnonzero(self.class_role == role)

    def indices(self, role: str) -> np.ndarray:
        """Image indices of every drawing of the classes with `role`."""
        return np.flatnonzero(np.isin(self.labels, self.classes(role)))

    def exemplar_indices(self) -> np.ndarray:
        """Image index of the single exemplar of each `train` class, in class order."""
        train = self.classes("train")
        idx = np.flatnonzero(np.isin(self.labels, train) & (self.drawers == self.exemplar_drawer[self.labels]))
        return idx[np.argsort(self.labels[idx], kind="stable")]

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> OmniglotSet:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: prepared data not found; run `dvc repro prepare` first")
        with np.load(path, allow_pickle=False) as data:
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def assign_roles(background_alphabets: list[str], n_source: int, seed: int) -> dict[str, str]:
    """Seeded split of the background alphabets into `source` and `train` roles."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(background_alphabets))
    source = {background_alphabets[i] for i in order[:n_source]}
    return {a: ("source" if a in source else "train") for a in background_alphabets}


def prepare_omniglot(zips: dict[str, Path], cfg: DataConfig) -> tuple[OmniglotSet, dict]:
    """Decode, split and describe the dataset. Returns the set and its manifest."""
    listing = {split: list_zip(zips[split], split) for split in SPLITS}
    background = sorted({info.alphabet for info in listing["images_background"]})
    if len(background) <= cfg.n_source_alphabets:
        raise DataError(
            f"{zips['images_background']}: {len(background)} background alphabets, but "
            f"data.n_source_alphabets={cfg.n_source_alphabets} leaves none for the one-shot training classes"
        )
    roles = assign_roles(background, cfg.n_source_alphabets, cfg.split_seed)
    rng = np.random.default_rng(cfg.exemplar_seed)

    alphabet: list[str] = []
    character: list[str] = []
    role: list[str] = []
    exemplar: list[int] = []
    members: dict[str, list[str]] = {split: [] for split in SPLITS}
    labels: list[int] = []
    drawers: list[int] = []
    kept_per_alphabet: dict[str, int] = {}
    for split in SPLITS:
        for info, names in listing[split].items():
            kept = kept_per_alphabet.get(info.alphabet, 0)
            if cfg.max_classes_per_alphabet is not None and kept >= cfg.max_classes_per_alphabet:
                continue
            kept_per_alphabet[info.alphabet] = kept + 1
            c = len(alphabet)
            alphabet.append(info.alphabet)
            character.append(info.character)
            r = roles.get(info.alphabet, "novel")
            role.append(r)
            exemplar.append(int(rng.integers(DRAWERS)) if r == "train" else -1)
            members[split].extend(names)
            labels.extend([c] * DRAWERS)
            drawers.extend(range(DRAWERS))

    images = np.concatenate(
        [decode_members(zips[s], members[s], cfg.image_size, desc=f"decode {s}") for s in SPLITS]
    )
    dataset = OmniglotSet(
        images=images,
        labels=np.asarray(labels, dtype=np.int64),
        drawers=np.asarray(drawers, dtype=np.int64),
        class_alphabet=np.asarray(alphabet),
        class_character=np.asarray(character),
        class_role=np.asarray(role),
        exemplar_drawer=np.asarray(exemplar, dtype=np.int64),
    )
    manifest = {
        "image_size": cfg.image_size,
        "zips": {s: {"path": str(p), "sha256": file_hash(p, "sha256")} for s, p in zips.items()},
        "alphabets": {r: sorted({a for a, rr in zip(alphabet, role, strict=True) if rr == r}) for r in ROLES},
        "classes": {r: int((dataset.class_role == r).sum()) for r in ROLES},
        "images": {r: len(dataset.indices(r)) for r in ROLES},
        "exemplars": {
            f"{alphabet[c]}/{character[c]}": int(exemplar[c]) + 1 for c in dataset.classes("train")
        },
    }
    return dataset, manifest
