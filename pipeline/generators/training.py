"""Training a generator family on the source classes: the Trainer run over same-class pairs."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from pipeline.config import TrainerConfig
from pipeline.data.batches import SameClassPairs
from pipeline.data.fewshot import FewShotSet
from pipeline.generators import get_family
from pipeline.generators.module import MODULES
from pipeline.generators.synthesis import synthesize_from_exemplars
from pipeline.hardware import resolve_precision
from pipeline.training import FiniteLosses, build_trainer, export_model, prepare_model

# Lightning's DDP launchers, each with a variant that expects parameters without gradients in a backward pass.
DDP_LAUNCHERS = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def expecting_unused_parameters(strategy: str) -> str:
    """The DDP strategy `strategy` told to expect unused parameters (any other strategy as it is).

    A GAN steps the critic and the generator in turn: each backward leaves the other network's weights without
    gradients, which DDP must be told to expect or it stops at the second step.
    """
    launcher = strategy.removesuffix("_find_unused_parameters_false").removesuffix("_find_unused_parameters_true")
    return f"{launcher}_find_unused_parameters_true" if launcher in DDP_LAUNCHERS else strategy


def fit_generator(dataset: FewShotSet, name: str, cfg: Any, trainer_cfg: TrainerConfig,
                  loggers: list[Any]) -> tuple[nn.Module, float]:
    """Train family `name` (params `cfg`) on every image of the source classes: (exported model, seconds).

    The network takes the dataset's channels and size; `trainer_cfg` already carries the model's
    own precision overrides (`training.with_overrides`).
    """
    family = get_family(name)
    source = dataset.indices("source")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        model = prepare_model(family.build(cfg, dataset.image_size, dataset.channels), trainer_cfg)
    except ValueError as exc:  # a size the network's levels cannot halve: name both keys that set it
        raise ValueError(f"generator.{name} cannot take the data's {dataset.image_size} px images ({exc}); "
                         f"change generator.{name}.widths or data.image_size") from exc
    module = MODULES[name](model, cfg)
    try:
        pairs = SameClassPairs(dataset.images[source], dataset.labels[source], cfg.batch_size, cfg.seed,
                               targets=getattr(cfg, "real_targets", 1))
    except ValueError as exc:
        raise ValueError(f"generator.{name}: {exc}; lower generator.{name}.real_targets (if it has one), or give "
                         "the source classes more images") from exc
    loader = torch.utils.data.DataLoader(pairs, batch_size=None, num_workers=1, persistent_workers=True)
    # GANs step two optimizers per batch, and Lightning counts each step.
    steps = cfg.max_steps * getattr(module, "optimizer_steps_per_batch", 1)
    rates = ", ".join(f"`generator.{name}.{k}` (now {getattr(cfg, k):g})" for k in ("lr", "lr_generator", "lr_critic")
                      if hasattr(cfg, k))
    fp32 = ("" if "32" in resolve_precision(trainer_cfg.precision, trainer_cfg.accelerator)
            else f", or train in fp32 (`generator.{name}.precision: 32-true`)")
    guard = FiniteLosses(f"generator {name}", f"lower {rates}{fp32}")
    if not module.automatic_optimization:
        trainer_cfg = dataclasses.replace(trainer_cfg, strategy=expecting_unused_parameters(trainer_cfg.strategy))
    trainer = build_trainer(trainer_cfg, steps, loggers, guard=guard)
    start = time.perf_counter()
    trainer.fit(module, loader)
    return export_model(model), time.perf_counter() - start


def source_samples(model: nn.Module, dataset: FewShotSet, seed: int,
                   n_classes: int = 8, n: int = 10) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Sample-grid rows of what a generator learned: (group, exemplar [C, S, S], n drawings [n, C, S, S])
    for seeded source classes, the first image of each as exemplar."""
    source = dataset.classes("source")
    picks = np.random.default_rng(seed).choice(source, size=min(n_classes, len(source)), replace=False)
    exemplars = dataset.images[[np.flatnonzero(dataset.labels == c)[0] for c in picks]]
    drawn = synthesize_from_exemplars(model, exemplars, n, torch.Generator().manual_seed(seed))
    return [(str(dataset.class_group[c]), e, d) for c, e, d in zip(picks, exemplars, drawn, strict=True)]
