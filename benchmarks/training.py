"""Where a classifier's training time goes: the bare network against the pipeline's training loop, in one run.

Three figures, each on the same real drawings and the `siamese` / `trainer` params of params.yaml
(default: the `src_classic` variant's pools, batches of `batch_classes` x 2 images):

- **bare network**: `SiameseModule.training_step` (forward and loss) + backward + AdamW step on one
  fixed batch, under the trainer's precision and layout: what the hardware gives, nothing else;
- **batch building**: one `PairBatches` batch, with the classic transforms drawn per image by
  albumentations, drawn for the whole batch at once on tensors (`augment.engine: tensor`), and none;
- **training loop**: `fit_siamese` as a stage runs it (Lightning's loop, the batch stream, the
  transforms, the optimizer and its schedule, logging), steady state after the first steps, then
  the share of the bare network's throughput it reaches. Lightning's SimpleProfiler gives the split:
  batch fetch, training step, backward, optimizer step, callbacks and logging.

    python benchmarks/training.py [--steps 200] [--variant src_classic] [--engine tensor albumentations]
    python benchmarks/training.py --levers    # the bare network: fp32, torch.compile, larger batches
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.module import SiameseModule
from pipeline.classifiers.network import SiameseNet
from pipeline.classifiers.training import fit_siamese
from pipeline.config import TrainerConfig, load_params, section
from pipeline.data.augment import ClassicAugmentConfig, classic_transform
from pipeline.data.batches import PairBatches
from pipeline.data.fewshot import FewShotSet
from pipeline.data.prepare import DataConfig, prepare_dataset
from pipeline.data.synthetic import SyntheticSet
from pipeline.training import configure_torch, prepare_model
from pipeline.variants import VariantConfig, training_pools

ROOT = Path(__file__).resolve().parents[1]


def bare_network(batch: tuple[torch.Tensor, torch.Tensor], cfg: SiameseConfig, trainer_cfg: TrainerConfig,
                 steps: int, compile: bool = False, warmup: int = 5) -> float:
    """Images/s of forward + loss + backward + AdamW step on one batch, nothing around them
    (`compile`: the network through `torch.compile`, its compilation inside the `warmup` steps)."""
    torch.manual_seed(cfg.seed)
    x1 = batch[0]
    net = prepare_model(SiameseNet(x1.shape[-1], cfg.channels, cfg.embedding_dim, cfg.loss,
                                   in_channels=x1.shape[1]), trainer_cfg)
    module = SiameseModule(torch.compile(net) if compile else net, cfg)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bf16 = trainer_cfg.precision.startswith("bf16")
    with warnings.catch_warnings():  # training_step logs; without a Trainer, Lightning warns and drops it
        warnings.simplefilter("ignore")
        for i in range(steps + warmup):
            if i == warmup:
                start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = module.training_step(batch, i)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return 2 * len(x1) * steps / (time.perf_counter() - start)


def levers(pools: list[np.ndarray], cfg: SiameseConfig, trainer_cfg: TrainerConfig, steps: int) -> None:
    """The bare network under each speed lever, in this one run: precision and layout, torch.compile
    (and what compiling costs), and larger batches (images/s: a batch twice the size is only a lever
    if the throughput rises)."""
    batch = next(iter(PairBatches(pools, cfg.batch_classes, cfg.seed)))
    fp32 = dataclasses.replace(trainer_cfg, precision="32-true", channels_last=False)
    rows: list[tuple[str, float, str]] = [("as configured", bare_network(batch, cfg, trainer_cfg, steps), "")]
    rows.append(("fp32, contiguous", bare_network(batch, cfg, fp32, steps), ""))
    start = time.perf_counter()
    compiled = bare_network(batch, cfg, trainer_cfg, steps, compile=True)
    seconds = time.perf_counter() - start
    rows.append(("torch.compile (inductor)", compiled, f"compiling + {steps} steps: {seconds:.0f} s"))
    for classes in (2 * cfg.batch_classes, 4 * cfg.batch_classes):
        bigger = next(iter(PairBatches(pools, classes, cfg.seed)))
        wide = dataclasses.replace(cfg, batch_classes=classes)
        rows.append((f"{2 * classes} images a batch",
                     bare_network(bigger, wide, trainer_cfg, max(10, steps * cfg.batch_classes // classes)), ""))
    rows.append(("as configured, again", bare_network(batch, cfg, trainer_cfg, steps), ""))
    base = rows[0][1]
    print("\n| bare network | images/s | vs as configured | note |\n| --- | ---: | ---: | --- |")
    for name, ips, note in rows:
        print(f"| {name} | {ips:,.0f} | {ips / base:.2f}x | {note} |")


def batch_building(pools: list[np.ndarray], cfg: SiameseConfig, transform: Any, n: int) -> float:
    """Milliseconds per training batch: PairBatches drawing it, then the transform (either kind)."""
    per_image = transform if transform is not None and not callable(getattr(transform, "batch", None)) else None
    stream = iter(PairBatches(pools, cfg.batch_classes, cfg.seed, per_image))
    next(stream)
    start = time.perf_counter()
    for _ in range(n):
        x1, x2 = next(stream)
        if per_image is None and transform is not None:
            transform.batch(x1), transform.batch(x2)
    return 1000 * (time.perf_counter() - start) / n


class StepClock(pl.Callback):
    """Wall time from the end of batch `skip` to the end of the last: the loop's steady state."""

    def __init__(self, skip: int):
        self.skip, self.start, self.end, self.steps = skip, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.skip:
            self.start = time.perf_counter()
        elif trainer.global_step > self.skip:
            self.end, self.steps = time.perf_counter(), trainer.global_step - self.skip


def training_loop(pools: list[np.ndarray], cfg: SiameseConfig, trainer_cfg: TrainerConfig, augment: Any,
                  steps: int, profile: bool) -> tuple[float, float, str]:
    """(steady-state images/s, seconds of the whole fit, the profiler's summary) of `fit_siamese`."""
    clock = StepClock(skip=min(20, steps // 4))
    cfg = dataclasses.replace(cfg, max_steps=steps)
    profiler = pl.profilers.SimpleProfiler() if profile else None
    start = time.perf_counter()
    fit_siamese(pools, cfg, trainer_cfg, [], transform=augment, callbacks=[clock], profiler=profiler,
                enable_progress_bar=False)
    seconds = time.perf_counter() - start
    summary = profiler.summary() if profiler is not None else ""
    return 2 * cfg.batch_classes * clock.steps / (clock.end - clock.start), seconds, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "prepared" / "dataset.npz",
                    help="a prepared dataset (default: the pipeline's; prepared in memory from params if absent)")
    ap.add_argument("--variant", default="src_classic")
    ap.add_argument("--steps", type=int, default=200, help="training steps of each measured loop")
    ap.add_argument("--engine", nargs="+", default=["tensor", "albumentations"],
                    help="augment.engine values to run the loop with")
    ap.add_argument("--no-profile", action="store_true", help="skip the loop under Lightning's SimpleProfiler")
    ap.add_argument("--levers", action="store_true",
                    help="only the bare network under each speed lever (fp32, torch.compile, larger batches)")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = section(params, SiameseConfig, "siamese")
    trainer_cfg = section(params, TrainerConfig, "trainer")
    augment = section(params, ClassicAugmentConfig, "augment")
    variant = section(params, VariantConfig, f"variants.{args.variant}")
    configure_torch(trainer_cfg)
    if args.data.is_file():
        dataset = FewShotSet.load(args.data)
    else:
        dataset, _ = prepare_dataset(section(params, DataConfig, "data"))
    none = SyntheticSet(images=dataset.images[:0], labels=dataset.labels[:0], generator="none")
    pools = training_pools(dataset, variant, none)
    batch = next(iter(PairBatches(pools, cfg.batch_classes, cfg.seed)))
    images = 2 * cfg.batch_classes
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {trainer_cfg.precision}, "
          f"channels_last {trainer_cfg.channels_last}; variant {args.variant}: {len(pools)} classes, "
          f"batches of {images} images {tuple(batch[0].shape[1:])}, loss {cfg.loss}")

    if args.levers:
        levers(pools, cfg, trainer_cfg, steps=max(30, args.steps // 4))
        return
    bare = bare_network(batch, cfg, trainer_cfg, steps=max(30, args.steps // 4))
    print(f"bare network (forward + loss + backward + AdamW): {bare:,.0f} images/s, "
          f"{1000 * images / bare:.1f} ms a batch")
    engines = {e: classic_transform(dataclasses.replace(augment, engine=e), cfg.seed) for e in args.engine}
    for name, transform in {**{f"classic, {e}": t for e, t in engines.items()}, "no transforms": None}.items():
        print(f"batch building, {name}: {batch_building(pools, cfg, transform, 50):.2f} ms a batch")
    for engine, transform in engines.items():
        ips, seconds, _ = training_loop(pools, cfg, trainer_cfg, transform, args.steps, profile=False)
        print(f"training loop, classic {engine}: {ips:,.0f} images/s = {ips / bare:.0%} of the bare network "
              f"({args.steps} steps in {seconds:.1f} s with start-up)")
    if not args.no_profile:
        engine, transform = next(iter(engines.items()))
        _, _, summary = training_loop(pools, cfg, trainer_cfg, transform, args.steps, profile=True)
        print(f"\nwhere the loop's time goes (classic {engine}, Lightning SimpleProfiler):\n{summary}")
    # measured last, after the loops, so that a machine warming up does not favour the baseline
    print(f"bare network again: {bare_network(batch, cfg, trainer_cfg, steps=max(30, args.steps // 4)):,.0f} images/s")


if __name__ == "__main__":
    main()
