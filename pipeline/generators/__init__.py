"""Generator registry: one module per family, one entry here, one params section `generator.<name>`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import nn

from pipeline.checkpoints import FILENAME, CheckpointError, load_weights, read_checkpoint, save_checkpoint
from pipeline.generators import gan, vae

KIND = "generator"


@dataclasses.dataclass(frozen=True)
class GeneratorFamily:
    config: type  # frozen dataclass validated from params `generator.<name>`
    model: type[nn.Module]  # rebuilt from the checkpoint's constructor config
    module: type[pl.LightningModule]  # the training procedure
    build: Any  # (config, image_size, channels) -> model


GENERATORS: dict[str, GeneratorFamily] = {
    "vae": GeneratorFamily(vae.VAEConfig, vae.ExemplarVAE, vae.VAEModule, vae.build),
    "gan": GeneratorFamily(gan.GANConfig, gan.DAGANGenerator, gan.GANModule, gan.build),
}


def get_family(name: str) -> GeneratorFamily:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; available: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name]


def save_generator(name: str, model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Weights plus the family and constructor config: the file alone rebuilds the generator."""
    save_checkpoint(model, path, KIND, {"family": name, **(extra or {})})


def load_generator(path: str | Path, image_size: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a generator from its checkpoint: (model in eval mode, what its stage recorded, `family` among it).

    image_size: draw at another size than the one trained at. Both families are fully convolutional
    and move strokes in image-relative units, so the weights apply unchanged (transfer to other data).
    """
    path = Path(path)
    if not (path.is_file() or (path / FILENAME).is_file()):
        raise CheckpointError(f"{path}: generator checkpoint not found; run `dvc repro train_generator` first")
    config, extra = read_checkpoint(path, KIND)
    if image_size is not None:
        config = {**config, "image_size": image_size}
    return load_weights(get_family(extra.get("family", "")).model(**config), path), extra
