"""Generator registry: one params section `generator.<name>` per family, and one entry per family in each of
`CONFIGS` (its params class, plain Python), `get_family` (its network and `build`: the module
`pipeline.generators.<name>`, torch and diffusers, no Lightning) and `pipeline.generators.module.MODULES`
(its training procedure, a LightningModule).

The networks are imported by `get_family`, not with this package: torch and diffusers take about 3 s a
process on 2 cores, which checking params does without, and drawing from a trained generator loads no
Lightning.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.checkpoints import FILENAME, CheckpointError, load_weights, read_checkpoint, save_checkpoint
from pipeline.generators.config import GANConfig, VAEConfig

if TYPE_CHECKING:
    from torch import nn

KIND = "generator"

# Family name -> its params class, validated from params `generator.<name>`.
CONFIGS: dict[str, type] = {"vae": VAEConfig, "gan": GANConfig}


@dataclasses.dataclass(frozen=True)
class GeneratorFamily:
    config: type  # frozen dataclass validated from params `generator.<name>`
    model: type[nn.Module]  # rebuilt from the checkpoint's constructor config
    build: Any  # (config, image_size, channels) -> model


@functools.cache
def get_family(name: str) -> GeneratorFamily:
    if name not in CONFIGS:
        raise ValueError(f"unknown generator {name!r}; available: {', '.join(sorted(CONFIGS))}")
    from pipeline.generators import gan, vae  # the networks: torch and diffusers, imported where one is built

    networks = {"vae": (vae.ExemplarVAE, vae.build), "gan": (gan.DAGANGenerator, gan.build)}
    return GeneratorFamily(CONFIGS[name], *networks[name])


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
