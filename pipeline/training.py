"""Lightning Trainer construction shared by the training stages."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch

from pipeline.config import TrainerConfig


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


def fit_siamese(pools: list[Any], cfg: Any, trainer_cfg: TrainerConfig, loggers: list[Any],
                transform: Any = None, val_data: dict[str, Any] | None = None) -> Any:
    """Train a Siamese network on per-class image pools (uint8 [n_c, S, S] each); returns it exported.

    cfg: `SiameseConfig`. The pair batches stream endlessly; `cfg.max_steps` ends training.
    val_data: seen-class validation images and episodes for the learning curve, or None.
    """
    from pipeline.siamese import PairBatches, SiameseModule, SiameseNet

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    size = int(pools[0].shape[-1])
    net = prepare_model(SiameseNet(size, cfg.channels, cfg.embedding_dim, cfg.loss), trainer_cfg)
    module = SiameseModule(net, cfg, val_data=val_data)
    # Batches are built in this process: on 2 cores a loader worker competes with the model for them
    # (300 steps: 11.9 s in-process, 15.1 s with one worker, 13.3 s with two; same batches either way).
    loader = torch.utils.data.DataLoader(PairBatches(pools, cfg.batch_classes, cfg.seed, transform),
                                         batch_size=None, num_workers=0)
    trainer = build_trainer(trainer_cfg, cfg.max_steps, loggers, val_every=cfg.val_every if val_data else None)
    # One validation 'batch': validation reads module.val_data.
    trainer.fit(module, loader, [0] if val_data else None)
    return export_model(net)
