"""Training a Siamese network: the Trainer run over pair batches, its learning curve, its verification threshold."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.fewshot import embed_all
from pipeline.classifiers.module import SiameseModule
from pipeline.classifiers.network import SiameseNet
from pipeline.classifiers.verification import Calibration, Pairs, calibrate_threshold, sample_pairs
from pipeline.config import TrainerConfig
from pipeline.data.augment import BatchAffine, ClassicAugmentConfig, classic_transform
from pipeline.data.batches import PairBatches
from pipeline.data.episodes import sample_episodes
from pipeline.data.fewshot import DataError, FewShotSet
from pipeline.data.images import to_tensor
from pipeline.data.synthetic import SyntheticSet
from pipeline.hardware import resolve_precision
from pipeline.training import FiniteLosses, build_trainer, export_model, prepare_model
from pipeline.variants import VariantConfig, training_pools


def seen_validation(dataset: FewShotSet, seed: int, n_way: int = 20, n_episodes: int = 200) -> dict[str, Any]:
    """The learning curve's data: seen-class episodes (the exemplar as support, a held-out image as query)
    over the one-shot training classes, never the novel ones. {"images": [M, C, S, S], "episodes": Episodes}
    with the episodes indexing those images."""
    train_classes = dataset.classes("train")
    idx = dataset.indices("train")
    episodes = sample_episodes(dataset.labels, train_classes, min(n_way, len(train_classes)), n_episodes,
                               np.random.default_rng(seed), fixed_support=dataset.exemplar,
                               name="validation episodes")
    remap = np.full(len(dataset.labels), -1)
    remap[idx] = np.arange(len(idx))
    episodes = dataclasses.replace(episodes, support=remap[episodes.support], query=remap[episodes.query])
    return {"images": to_tensor(dataset.images[idx]), "episodes": episodes}


def with_rotated_classes(pools: list[np.ndarray]) -> list[np.ndarray]:
    """The pools, then each pool rotated by 90, 180 and 270 degrees as new classes (Vinyals et al. 2016):
    a drawing turned a quarter is not the same character, so it gives the metric more classes to tell apart."""
    return pools + [np.ascontiguousarray(np.rot90(p, k, axes=(-2, -1))) for k in (1, 2, 3) for p in pools]


def fit_siamese(pools: list[np.ndarray], cfg: SiameseConfig, trainer_cfg: TrainerConfig, loggers: list[Any],
                transform: Any = None, val_data: dict[str, Any] | None = None, params_key: str = "siamese",
                **trainer_kwargs: Any) -> SiameseNet:
    """Train a Siamese network on per-class image pools (uint8 [n_c, C, S, S] each); returns it exported.

    The pair batches stream endlessly; `cfg.max_steps` ends training. The network takes the pools'
    channels and size. `cfg.rotated_classes`: the pools' rotated copies train as classes too.
    transform: `classic_transform`'s, or None. A `BatchAffine` transforms each batch as a whole in
    the module, an albumentations one each image as `PairBatches` builds the batch.
    val_data: `seen_validation`'s images and episodes for the learning curve, or None.
    params_key: the params section `cfg` came from (`siamese`, `reference`), for the errors to name.
    trainer_kwargs: more `pl.Trainer` arguments (callbacks, a profiler: `benchmarks/training.py`).
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    channels, size = int(pools[0].shape[1]), int(pools[0].shape[-1])
    if cfg.rotated_classes:
        pools = with_rotated_classes(pools)
    net = prepare_model(SiameseNet(size, cfg.channels, cfg.embedding_dim, cfg.loss, in_channels=channels),
                        trainer_cfg)
    per_batch = transform if isinstance(transform, BatchAffine) else None
    module = SiameseModule(net, cfg, val_data=val_data, batch_transform=per_batch)
    # Batches are built in this process: on 2 cores a loader worker competes with the model for them
    # (300 steps: 11.9 s in-process, 15.1 s with one worker, 13.3 s with two; same batches either way).
    batches = PairBatches(pools, cfg.batch_classes, cfg.seed, None if per_batch else transform,
                          key=f"{params_key}.batch_classes")
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=0)
    fp32 = ("" if "32" in resolve_precision(trainer_cfg.precision, trainer_cfg.accelerator)
            else ", or train in fp32 (`trainer.precision: 32-true`)")
    guard = FiniteLosses(f"{params_key} classifier", f"lower `{params_key}.lr` (now {cfg.lr:g}){fp32}")
    trainer = build_trainer(trainer_cfg, cfg.max_steps, loggers, val_every=cfg.val_every if val_data else None,
                            guard=guard, **trainer_kwargs)
    # One validation 'batch': validation reads module.val_data.
    trainer.fit(module, loader, [0] if val_data else None)
    net = export_model(net)
    assert isinstance(net, SiameseNet)
    return net


def calibrate_verification(net: SiameseNet, images: np.ndarray, pairs: Pairs, target: str) -> Calibration:
    """The verification threshold for `target`, measured on `pairs` indexing `images` [N, C, S, S] uint8.

    Each image is embedded once, as at inference (`embed_all`); a pair's score is `pair_similarity`.
    """
    used, inverse = np.unique(np.concatenate([pairs.a, pairs.b]), return_inverse=True)
    embeddings = embed_all(net, to_tensor(images[used]))
    first, second = np.split(inverse, 2)
    with torch.no_grad():
        sims = net.pair_similarity(embeddings[torch.from_numpy(first)], embeddings[torch.from_numpy(second)])
    return calibrate_threshold(sims.cpu().numpy(), pairs.same, target)


def calibration_classes(dataset: FewShotSet) -> np.ndarray:
    """The `calibration` classes, or a DataError naming the params to set (called before training)."""
    classes = dataset.classes("calibration")
    if len(classes) < 2:
        raise DataError(f"the prepared data has {len(classes)} calibration classes; the verification threshold "
                        "needs at least 2 classes no classifier trains on. Add `calibration: 2` (groups) to "
                        "data.roles, or `calibration` rows to data.split_file")
    return classes


def calibrate_on_held_out(net: SiameseNet, dataset: FewShotSet, cfg: SiameseConfig) -> Calibration:
    """The saved threshold: `cfg.verify_pairs` same- and different-class pairs of the `calibration`
    classes, which no classifier or generator trains on (a threshold set on training classes would
    be too strict for the classes a user enrolls)."""
    classes = calibration_classes(dataset)
    pairs = sample_pairs(dataset.labels, classes, cfg.verify_pairs, np.random.default_rng(cfg.seed))
    return calibrate_verification(net, dataset.images, pairs, cfg.verify_target)


def fit_generator_variant(dataset: FewShotSet, synthetic: SyntheticSet, n_synthetic: int, cfg: SiameseConfig,
                          trainer_cfg: TrainerConfig, augment: ClassicAugmentConfig,
                          with_source: bool = False) -> SiameseNet:
    """A generator variant's classifier without logging: each exemplar plus its first `n_synthetic`
    synthetic drawings (and the source classes when `with_source`), classic transforms on top,
    every other setting as the variants'. What the sweep and benchmarks train for each of their points."""
    kinds = ("exemplars", "synthetic") + (("source",) if with_source else ())
    variant = VariantConfig(train_on=kinds, synthetic=synthetic.generator)
    pools = training_pools(dataset, variant, synthetic, n_synthetic=n_synthetic)
    return fit_siamese(pools, cfg, trainer_cfg, [], transform=classic_transform(augment, cfg.seed))
