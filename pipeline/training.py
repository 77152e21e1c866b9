"""Lightning Trainer construction shared by every training procedure (classifiers and generators)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import MLFlowLogger as LightningMLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from pipeline.config import TrainerConfig
from pipeline.hardware import resolve_precision
from pipeline.io import atomic_dir


class _LightningChatter(logging.Filter):
    """Drop the lines Lightning logs on every fit that tell a user of this pipeline nothing: its hardware
    summary and precision (params `trainer` say both), a note on `limit_val_batches` that the pipeline sets on
    purpose, and its advertisement for a cloud logger. Its warnings and errors pass."""

    NOISE = ("GPU available:", "TPU available:", "HPU available:", "Using bfloat16 Automatic Mixed Precision",
             "Using 16bit Automatic Mixed Precision", "`Trainer(limit_val_batches=", "\N{ELECTRIC LIGHT BULB} Tip:")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_LightningChatter())
# MLflow's system metrics monitor says at INFO that it starts, stops and finds no GPU: every training, noise.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
# Lightning 2.6 still builds torch's LeafSpec, which torch 2.13 deprecates: a warning in every fit about
# Lightning's internals, which nothing in this project can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
# Lightning 2.6's `all_gather(..., sync_grads=True)` (the classifiers' loss under DDP) calls torch's
# `torch.distributed.nn.functional.all_gather`, which torch 2.13 deprecates: once a fit per process, about Lightning.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")


def is_rank_zero() -> bool:
    """True in a single process and in rank zero of a distributed run. Lightning's DDP starts the other ranks by
    running the stage's command again with their rank in the environment (LOCAL_RANK; torchrun and SLURM set
    RANK, SLURM_PROCID), which Lightning reads at import: a stage knows its rank before it trains."""
    return int(rank_zero_only.rank) == 0  # type: ignore[attr-defined]


@contextlib.contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """The stage's output folder (io.atomic_dir) on rank zero; on another rank of a distributed run a throwaway
    folder, so that the loggers it is given write nowhere that lasts and the output is written once."""
    if is_rank_zero():
        with atomic_dir(path) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory(prefix="rank-") as tmp:
            yield Path(tmp)


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
    """channels_last lets oneDNN pick its fastest convolutions: bf16 on CPUs with AMX/AVX-512, fp32 too."""
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model  # type: ignore[call-overload]


def export_model(model: M) -> M:
    """fp32, contiguous weights for the checkpoint, whatever the training layout was."""
    return model.float().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


class TrainingDiverged(RuntimeError):
    """A training loss became NaN or infinite: the run stops there instead of saving a network that outputs NaN."""


class FiniteLosses(pl.Callback):
    """Stop training, with an error that names the fix, the first step a `train/*` value logged this step is not
    finite. Without it a diverged run (too high a learning rate) trains to the end and scores chance accuracy
    with nothing said."""

    def __init__(self, what: str, fix: str):
        self.what, self.fix = what, fix

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
                raise TrainingDiverged(f"{self.what}: training diverged at step {trainer.global_step}, {key} is "
                                       f"{value.item()}; {self.fix}. Nothing of this stage was saved")


def build_trainer(cfg: TrainerConfig, max_steps: int, loggers: list[Any], val_every: int | None = None,
                  guard: FiniteLosses | None = None, **kwargs: Any) -> pl.Trainer:
    """A Trainer whose hardware settings come straight from params `trainer`; `guard` stops it on a NaN loss."""
    if guard is not None:
        kwargs["callbacks"] = [guard, *kwargs.get("callbacks", [])]
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    for logger in loggers:  # which precision `auto` gave on this machine, beside the params
        logger.log_hyperparams({"trainer.precision_used": precision})
    return pl.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=precision,  # type: ignore[arg-type]
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


def dotted(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params -> {"siamese.lr": ..., "generator.gan.widths": [16, 64]}: the params.yaml path of each value,
    dots between, tuples as lists (as params.yaml and the variant runs write them)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLflow logger with the naming every run of the pipeline shares, and system metrics.

    Params go by their params.yaml path (`siamese.lr`, `generator.gan.widths` = [16, 64]) where Lightning
    writes `siamese/lr` and `(16, 64)`; no `epoch` metric (each training is one endless epoch, so it is
    always 0); while the run trains, MLflow's system metrics monitor samples CPU, memory and disk every
    `system_metrics_interval` seconds (`system/*` in the run's System metrics tab).
    """

    def __init__(self, *args: Any, system_metrics_interval: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._system_metrics_interval = system_metrics_interval
        self._monitor: Any = None

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        super().log_hyperparams(dotted(params if isinstance(params, Mapping) else vars(params)))
        if self._monitor is None:  # fit has started: the run exists
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self._system_metrics_interval,
                                                 tracking_uri=self._tracking_uri)
            self._monitor.start()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            monitor.finish()  # the sampler stops; what it published is sent
            # One last sample with what was collected since the last publish: a training shorter than one
            # interval still gets its system metrics.
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        super().finalize(status)
