"""Test helpers: real Omniglot drawings written out as image files in any format, and small Siamese model files."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import torch
from PIL import Image

from pipeline.siamese import SiameseNet, save_siamese
from pipeline.verification import Calibration

SIZE = 28
CALIBRATION = Calibration(target="eer", threshold=0.5, far=0.1, frr=0.1, n_pairs=4000)


def tiny_net(seed: int = 0) -> SiameseNet:
    torch.manual_seed(seed)
    return SiameseNet(SIZE, channels=8, embedding_dim=16).eval()


def write_model(path: Path, seed: int = 0, calibration: Calibration | None = CALIBRATION) -> Path:
    extra = {"variant": "vae"} | ({"verify": dataclasses.asdict(calibration)} if calibration else {})
    save_siamese(tiny_net(seed), str(path), extra=extra)
    return path


def write_drawing(path: Path, png: bytes, form: str = "png") -> Path:
    """An Omniglot drawing as a file: the original PNG, or re-encoded to show any size and format works."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png))
    if form == "png":
        path.write_bytes(png)
    elif form == "rgb":
        image.convert("RGB").save(path, format="PNG")
    elif form == "rgb-large":  # 3x the size, nearest neighbour: the same drawing in more pixels
        image.convert("RGB").resize((315, 315), Image.Resampling.NEAREST).save(path, format="PNG")
    elif form == "rgba-transparent":  # black strokes on a transparent page
        alpha = Image.eval(image.convert("L"), lambda v: 255 - v)
        Image.merge("RGBA", (*Image.new("RGB", image.size, "black").split(), alpha)).save(path, format="PNG")
    elif form == "jpeg":
        image.convert("L").save(path, format="JPEG", quality=95)
    else:
        raise ValueError(form)
    return path


def class_folders(root: Path, drawings: dict[str, list[bytes]], names: list[str], drawers: list[int]) -> Path:
    """root/<class>/<drawer>.png for each class and drawer."""
    for name in names:
        for d in drawers:
            write_drawing(root / name / f"{d:02d}.png", drawings[name][d])
    return root


def class_files(root: Path, drawings: dict[str, list[bytes]], names: list[str], drawer: int = 0) -> Path:
    """root/<class>.png, one drawing each."""
    for name in names:
        write_drawing(root / f"{name}.png", drawings[name][drawer])
    return root
