"""Generator registry: one module per family, one entry here, one params section `generator.<name>`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from pipeline.generators import gan, vae


@dataclasses.dataclass(frozen=True)
class GeneratorFamily:
    config: type  # frozen dataclass validated from params `generator.<name>`
    model: type[nn.Module]  # rebuilt from the checkpoint's constructor config
    module: type[pl.LightningModule]  # the training procedure
    build: Any  # (config, image_size) -> model


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
    torch.save({"kind": "generator", "family": name, "config": model.config,  # type: ignore[attr-defined]
                "state_dict": model.state_dict(), **(extra or {})}, path)


def load_generator(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: generator checkpoint not found; run `dvc repro train_generator` first")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "generator":
        raise ValueError(f"{path}: not a generator checkpoint written by this pipeline")
    model = get_family(ckpt["family"]).model(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
