"""One image in, one network input out: the preprocessing shared by data preparation and inference.

Every image becomes a square uint8 array [C, S, S] (C = 1 grayscale or 3 RGB). With `invert`, a
dark-on-light drawing is flipped so that its strokes are the foreground (255) on a background of
0, which is what the generators move and the classic transforms pad with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch


class ImageError(ValueError):
    """A file is not a readable image."""


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """How images are turned into network inputs; a trained model carries the spec of its data."""

    size: int = 28  # side S of the square input
    channels: int = 1  # 1: grayscale, 3: RGB
    invert: bool = True  # dark strokes on a light page -> strokes 255 on 0


def preprocess_image(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Any Pillow image (any mode or size) -> uint8 [C, S, S] by `spec`.

    The box filter averages the pixels each output pixel covers, so thin strokes survive the
    down-sizing as grey values. Transparent pixels count as paper (white). Grayscale and RGB
    inputs are converted to the spec's channels, never refused. A photo's EXIF orientation is
    applied, and 16-bit grayscale is scaled to 8 bits (Pillow's conversion would clip it).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        wide = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or 255 < wide.max() <= 65535 else max(wide.max(), 255.0)
        image = Image.fromarray(np.clip(wide / top * 255.0, 0, 255).round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        # Dropping alpha would turn a transparent page black (its colour is often 0): lay it on white.
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    mode = "L" if spec.channels == 1 else "RGB"
    pixels = np.asarray(image.convert(mode).resize((spec.size, spec.size), Image.Resampling.BOX), dtype=np.uint8)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return 255 - pixels if spec.invert else np.ascontiguousarray(pixels)


def load_image_file(path: str | Path, spec: ImageSpec) -> np.ndarray:
    """Read one image file and preprocess it; a non-image names the file."""
    return load_image_file_sized(path, spec)[0]


def load_image_file_sized(path: str | Path | BinaryIO, spec: ImageSpec,
                          name: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """`load_image_file`, and the file's (width, height) before preprocessing, from one opening.

    `path` may be an open binary file (an image file's bytes in a BytesIO); `name` names it in errors.
    """
    try:
        with Image.open(path) as image:
            return preprocess_image(image, spec), image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageError(f"{name or path}: not a readable image ({exc})") from exc


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, C, S, S] (foreground 255) -> float [N, C, S, S] in 0..1, the networks' input."""
    import torch  # here, not at the top: inference with ONNX Runtime reads images without torch

    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, S, S], got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


def to_display(image: np.ndarray, inverted: bool) -> Image.Image:
    """uint8 [C, S, S] -> a Pillow image as a person sees it (an inverted drawing dark on light again)."""
    pixels = 255 - image if inverted else image
    return Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
