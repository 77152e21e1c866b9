"""Lightning Trainer construction shared by every training procedure (classifiers and generators)."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch

from pipeline.config import TrainerConfig


class _LightningChatter(logging.Filter):
    """Drop the lines Lightning logs on every fit that tell a user of this pipeline nothing: its hardware
    summary and precision (params `trainer` say both), a note on `limit_val_batches` that the pipeline sets on
    purpose, and its advertisement for a cloud logger. Its warnings and errors pass."""

    NOISE = ("GPU available:", "TPU available:", "HPU available:", "Using bfloat16 Automatic Mixed Precision",
             "Using 16bit Automatic Mixed Precision", "`Trainer(limit_val_batches=", "\N{ELECTRIC LIGHT BULB} Tip:")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_LightningChatter())
# Lightning 2.6 still builds torch's LeafSpec, which torch 2.13 deprecates: a warning in every fit about
# Lightning's internals, which nothing in this project can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


def with_overrides(cfg: TrainerConfig, model_cfg: object) -> TrainerConfig:
    """`cfg` with the `precision` / `channels_last` a model's own params set (None keeps the trainer's)."""
    keys = ("precision", "channels_last")
    changes = {k: getattr(model_cfg, k) for k in keys if getattr(model_cfg, k, None) is not None}
    return dataclasses.replace(cfg, **changes)


def configure_torch(cfg: TrainerConfig) -> None:
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)


M = TypeVar("M", bound=torch.nn.Module)


def prepare_model(model: M, cfg: TrainerConfig) -> M:
    """channels_last lets oneDNN pick its fastest bf16 convolutions on CPUs with AMX/AVX-512."""
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model  # type: ignore[call-overload]


def export_model(model: M) -> M:
    """fp32, contiguous weights for the checkpoint, whatever the training layout was."""
    return model.float().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def build_trainer(cfg: TrainerConfig, max_steps: int, loggers: list[Any], val_every: int | None = None,
                  **kwargs: Any) -> pl.Trainer:
    """A Trainer whose hardware settings come straight from params `trainer`."""
    return pl.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=cfg.precision,  # type: ignore[arg-type]
        num_nodes=cfg.num_nodes,
        max_steps=max_steps,
        max_epochs=1,  # the batch streams are endless: max_steps ends training within this one "epoch"
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=1 if val_every else 0,
        num_sanity_val_steps=0,
        logger=loggers or False,
        enable_checkpointing=False,
        log_every_n_steps=10,
        enable_model_summary=False,
        **kwargs,
    )
