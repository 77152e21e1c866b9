"""Test helpers: real Omniglot drawings written out as image files in any format, and small Siamese model files."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.classifiers.network import SiameseNet, save_siamese
from pipeline.classifiers.verification import Calibration
from pipeline.data.fewshot import FewShotSet

DRAWERS = 20

SIZE = 28
CALIBRATION = Calibration(target="eer", threshold=0.5, far=0.1, frr=0.1, n_pairs=4000)


def tiny_net(seed: int = 0) -> SiameseNet:
    torch.manual_seed(seed)
    return SiameseNet(SIZE, channels=8, embedding_dim=16).eval()


def write_model(path: Path, seed: int = 0, calibration: Calibration | None = CALIBRATION) -> Path:
    """A tiny Siamese checkpoint (a model.safetensors file at `path`) with a verification threshold."""
    extra = {"variant": "vae"} | ({"verify": dataclasses.asdict(calibration)} if calibration else {})
    save_siamese(tiny_net(seed), path, extra=extra)
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


def blobs(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth blob drawings [n, 1, size, size] in 0..1 with an empty 3-pixel border (generator tests)."""
    g = torch.Generator().manual_seed(seed)
    coarse = (torch.rand(n, 1, size // 4, size // 4, generator=g) < 0.35).float()
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return F.pad(x[:, :, 3:-3, 3:-3], (3, 3, 3, 3))


def coded_dataset(roles: np.ndarray, exemplar_drawer: np.ndarray, size: int = 4) -> FewShotSet:
    """len(roles) classes x 20 drawers in class-then-drawer order; image i is constant with value i (1 channel).

    exemplar_drawer: [C] the drawer of each train class's exemplar (-1 for other roles)."""
    n = len(roles) * DRAWERS
    labels = np.repeat(np.arange(len(roles)), DRAWERS)
    exemplar = np.where(exemplar_drawer >= 0, np.arange(len(roles)) * DRAWERS + exemplar_drawer, -1)
    return FewShotSet(
        images=np.stack([np.full((1, size, size), i, np.uint8) for i in range(n)]),
        labels=labels,
        instances=np.tile(np.arange(DRAWERS), len(roles)),
        instance_names=np.array([f"drawer{d + 1:02d}" for d in range(DRAWERS)]),
        class_names=np.array([f"A/character{c:02d}" for c in range(len(roles))]),
        class_group=np.array(["A"] * len(roles)),
        class_role=roles,
        exemplar=exemplar.astype(np.int64),
    )
