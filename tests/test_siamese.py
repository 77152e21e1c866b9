"""Siamese network: shapes, seeding, checkpoints, config errors, pair batches, overfitting, the few-shot API,
and networks that follow the data (any image size from 28 to 84, grayscale or RGB)."""

from __future__ import annotations

import dataclasses
from itertools import islice
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import save_file

from pipeline.checkpoints import FILENAME, CheckpointError, save_checkpoint
from pipeline.classifiers.config import LOSSES, SiameseConfig
from pipeline.classifiers.fewshot import SiameseClassifier, embed_all
from pipeline.classifiers.module import SiameseModule, pick_negatives
from pipeline.classifiers.network import SiameseNet, folded, load_siamese, save_siamese
from pipeline.classifiers.training import fit_siamese, with_rotated_classes
from pipeline.config import ParamsError, TrainerConfig, from_dict
from pipeline.data.augment import BatchAffine, ClassicAugmentConfig, classic_transform, warp_affine
from pipeline.data.batches import PairBatches, SameClassPairs, apply_transform
from pipeline.data.images import to_tensor
from pipeline.generators import save_generator
from pipeline.generators.vae import ExemplarVAE
from pipeline.hardware import bf16_is_fast
from pipeline.training import TrainingDiverged

SIZE = 28


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread: None) -> None:
    """Tiny networks: see conftest.single_thread."""


def tiny_net(loss: str, seed: int = 0, image_size: int = SIZE, in_channels: int = 1) -> SiameseNet:
    torch.manual_seed(seed)
    return SiameseNet(image_size, channels=8, embedding_dim=16, loss=loss, in_channels=in_channels).eval()


def random_images(n: int, seed: int, size: int = SIZE, channels: int = 1) -> torch.Tensor:
    """Binary images [n, channels, size, size] in 0..1, fixed by the seed."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, channels, size, size, generator=g) < 0.3).float()


# ---------------------------------------------------------------------------- the network


@pytest.mark.parametrize("loss", LOSSES)
def test_output_shapes(loss: str) -> None:
    net = tiny_net(loss)
    a, b = random_images(5, seed=1), random_images(3, seed=2)
    with torch.no_grad():
        ea, eb = net.embed(a), net.embed(b)
        assert ea.shape == (5, 16) and eb.shape == (3, 16)
        assert net.similarity(ea, eb).shape == (5, 3)
        assert net(a, random_images(5, seed=3)).shape == (5,)


@pytest.mark.parametrize("loss", LOSSES)
def test_forward_is_the_diagonal_of_similarity(loss: str) -> None:
    net = tiny_net(loss)
    a, b = random_images(4, seed=1), random_images(4, seed=2)
    with torch.no_grad():
        pairwise = net(a, b)
        full = net.similarity(net.embed(a), net.embed(b))
    torch.testing.assert_close(pairwise, full.diagonal())


@pytest.mark.parametrize("loss", ["contrastive", "triplet", "proto"])
def test_metric_loss_embeddings_are_unit_norm(loss: str) -> None:
    with torch.no_grad():
        e = tiny_net(loss).embed(random_images(6, seed=1))
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(6))


def test_only_the_bce_loss_has_a_head() -> None:
    assert tiny_net("bce").head is not None
    assert tiny_net("contrastive").head is None
    assert tiny_net("triplet").head is None


@pytest.mark.parametrize("image_size", [4, 8, 15])
def test_too_small_image_size_is_refused(image_size: int) -> None:
    with pytest.raises(ValueError, match=f"image_size={image_size} is too small"):
        SiameseNet(image_size, channels=8, embedding_dim=16)


def test_smallest_image_size_works() -> None:
    net = tiny_net("contrastive", image_size=16)
    with torch.no_grad():
        assert net.embed(random_images(2, seed=0, size=16)).shape == (2, 16)


@pytest.mark.parametrize("loss", LOSSES)
def test_same_seed_same_weights_and_outputs(loss: str) -> None:
    first, second, other = tiny_net(loss, seed=3), tiny_net(loss, seed=3), tiny_net(loss, seed=4)
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    x, y = random_images(4, seed=1), random_images(4, seed=2)
    with torch.no_grad():
        assert torch.equal(first(x, y), second(x, y))
        assert not torch.allclose(first(x, y), other(x, y))


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("loss", LOSSES)
def test_save_load_round_trip(loss: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SiameseNet(32, channels=4, embedding_dim=8, loss=loss).eval()
    path = tmp_path / FILENAME
    save_siamese(net, path, extra={"variant": "classic"})

    loaded, extra = load_siamese(path)  # nothing but the file: the config comes with it
    assert loaded.config == {"image_size": 32, "channels": 4, "embedding_dim": 8, "loss": loss, "in_channels": 1}
    assert extra == {"variant": "classic"}  # what the stage saved, nothing else
    assert not loaded.training
    x, y = random_images(3, seed=1, size=32), random_images(3, seed=2, size=32)
    with torch.no_grad():
        assert torch.equal(loaded(x, y), net(x, y))
        assert torch.equal(loaded.embed(x), net.embed(x))


def test_load_siamese_takes_the_model_folder(tmp_path: Path) -> None:
    net = tiny_net("contrastive")
    save_siamese(net, tmp_path / FILENAME, extra={"variant": "vae"})
    loaded, extra = load_siamese(tmp_path)
    assert extra == {"variant": "vae"}
    x = random_images(2, seed=0)
    with torch.no_grad():
        assert torch.equal(loaded.embed(x), net.embed(x))


def test_load_siamese_refuses_a_plain_safetensors_file(tmp_path: Path) -> None:
    """Weights alone (no kind, no config) are not a checkpoint of this pipeline."""
    path = tmp_path / "weights.safetensors"
    save_file(tiny_net("contrastive").state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: not a siamese checkpoint"):
        load_siamese(path)


def test_load_siamese_refuses_a_generator_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "generator.safetensors"
    save_generator("vae", ExemplarVAE(16, latent_dim=2, widths=(8, 16)), path)
    with pytest.raises(CheckpointError, match=r"generator\.safetensors: a 'generator' checkpoint, not a siamese"):
        load_siamese(path)


@pytest.mark.parametrize("content", ["pickle", "bytes"])
def test_load_siamese_refuses_a_file_that_is_no_checkpoint(content: str, tmp_path: Path) -> None:
    """A torch pickle or random bytes named model.safetensors: refused, naming the file (no code is run)."""
    path = tmp_path / FILENAME
    if content == "pickle":
        torch.save({"kind": "siamese", "state_dict": tiny_net("contrastive").state_dict()}, path)
    else:
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a siamese checkpoint"):
        load_siamese(path)


def test_load_siamese_refuses_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    """A checkpoint whose config builds another network than its weights: refused, naming the file."""
    path = tmp_path / FILENAME
    net = tiny_net("contrastive")
    net.config = {**net.config, "channels": 16}  # the metadata claims 16 channels, the weights have 8
    save_checkpoint(net, path, "siamese")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: its weights do not fit SiameseNet"):
        load_siamese(path)


def test_checkpoint_errors_are_value_errors() -> None:
    assert issubclass(CheckpointError, ValueError)


def test_load_siamese_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"absent\.safetensors: no such model file"):
        load_siamese(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: no such model file"):
        load_siamese(tmp_path)  # a folder without a model


# ---------------------------------------------------------------------------- config


def test_config_from_params() -> None:
    cfg = from_dict(SiameseConfig, {"loss": "triplet", "lr": 0.01, "batch_classes": 2}, "siamese")
    assert (cfg.loss, cfg.lr, cfg.batch_classes) == ("triplet", 0.01, 2)


def test_unknown_loss_names_the_key_and_the_choices() -> None:
    with pytest.raises(ParamsError, match=r"`siamese\.loss` = 'hinge'") as info:
        from_dict(SiameseConfig, {"loss": "hinge"}, "siamese")
    for allowed in LOSSES:
        assert allowed in str(info.value)


@pytest.mark.parametrize("lr", [0, 0.0, -1e-3])
def test_lr_must_be_positive(lr: float) -> None:
    with pytest.raises(ParamsError, match=r"`siamese\.lr`.*> 0"):
        from_dict(SiameseConfig, {"lr": lr}, "siamese")


@pytest.mark.parametrize("batch_classes", [1, 0, -4])
def test_batch_classes_at_least_two(batch_classes: int) -> None:
    with pytest.raises(ParamsError, match=r"`siamese\.batch_classes`.*at least 2"):
        from_dict(SiameseConfig, {"batch_classes": batch_classes}, "siamese")


# ---------------------------------------------------------------------------- pair batches


def coded_pools(sizes: list[int], size: int = 8, channels: int = 1) -> list[np.ndarray]:
    """Pool c holds sizes[c] constant images [channels, size, size]; drawing j of class c has the value
    50 c + 10 j + 5."""
    return [np.stack([np.full((channels, size, size), 50 * c + 10 * j + 5, np.uint8) for j in range(n)])
            for c, n in enumerate(sizes)]


def decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[P, C, S, S] of coded constant images -> (class [P], drawing [P])."""
    values = (x * 255).round().to(torch.int64)
    assert torch.equal(values, values[:, :, :1, :1].expand_as(values)), "an image is not constant"
    v = values[:, 0, 0, 0].numpy()
    return v // 50, (v % 50) // 10


def batches(dataset: PairBatches, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(islice(iter(dataset), n))


@pytest.mark.parametrize("channels", [1, 3])
def test_pair_batches_shapes_and_range(channels: int) -> None:
    x1, x2 = next(iter(PairBatches(coded_pools([3, 3, 3, 3], channels=channels), batch_classes=3, seed=0)))
    for x in (x1, x2):
        assert x.shape == (3, channels, 8, 8) and x.dtype == torch.float32
        assert float(x.min()) >= 0 and float(x.max()) <= 1
        decode(x)  # every channel of an image carries its code


def test_pair_rows_share_a_class_with_distinct_drawings() -> None:
    sizes = [2, 3, 1, 4, 5]
    for x1, x2 in batches(PairBatches(coded_pools(sizes), batch_classes=4, seed=1), 30):
        c1, j1 = decode(x1)
        c2, j2 = decode(x2)
        np.testing.assert_array_equal(c1, c2)
        assert len(set(c1)) == 4, "a class appears twice in one batch"
        for c, a, b in zip(c1, j1, j2, strict=True):
            assert a < sizes[c] and b < sizes[c]
            assert (a != b) if sizes[c] > 1 else (a == b == 0)


def test_pair_batches_cover_every_class_and_drawing() -> None:
    seen: set[tuple[int, int]] = set()
    for x1, x2 in batches(PairBatches(coded_pools([2, 3, 4]), batch_classes=2, seed=0), 50):
        for x in (x1, x2):
            seen.update(zip(*(a.tolist() for a in decode(x)), strict=True))
    assert seen == {(c, j) for c, n in enumerate([2, 3, 4]) for j in range(n)}


def test_pair_batches_are_seeded() -> None:
    pools = coded_pools([4, 4, 4, 4, 4])
    first = batches(PairBatches(pools, batch_classes=3, seed=7), 5)
    again = batches(PairBatches(pools, batch_classes=3, seed=7), 5)
    other = batches(PairBatches(pools, batch_classes=3, seed=8), 5)
    assert all(torch.equal(a, b) for pa, pb in zip(first, again, strict=True) for a, b in zip(pa, pb, strict=True))
    assert not all(torch.equal(a, b) for pa, pb in zip(first, other, strict=True) for a, b in zip(pa, pb, strict=True))


def test_batch_classes_larger_than_the_classes_is_refused() -> None:
    expected = r"batch_classes=4 is larger than the 3 training classes; lower it to at most 3"
    with pytest.raises(ValueError, match=expected):
        PairBatches(coded_pools([2, 2, 2]), batch_classes=4, seed=0)


def test_an_empty_pool_is_refused() -> None:
    pools = [*coded_pools([2, 2]), np.empty((0, 1, 8, 8), np.uint8)]
    with pytest.raises(ValueError, match="no images"):
        PairBatches(pools, batch_classes=2, seed=0)


def stroke_pools(n_classes: int = 4, channels: int = 1) -> list[np.ndarray]:
    """Two drawings [channels, S, S] per class of a bar-and-blob shape, away from the border."""
    pools = []
    for c in range(n_classes):
        img = np.zeros((channels, SIZE, SIZE), np.uint8)
        img[:, 6:22, 12 + c % 3: 15 + c % 3] = 255
        img[:, 8 + c: 12 + c, 6:22] = 255
        pools.append(np.stack([img, np.roll(img, 1, axis=2)]))
    return pools


ALBUMENTATIONS = ClassicAugmentConfig(engine="albumentations")


def test_classic_transform_changes_images_and_is_seeded() -> None:
    cfg = ALBUMENTATIONS
    image = stroke_pools()[0][0][0]  # albumentations' own layout: [S, S]
    out = classic_transform(cfg, seed=3)(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(classic_transform(cfg, seed=3)(image=image)["image"], out)
    assert not np.array_equal(classic_transform(cfg, seed=4)(image=image)["image"], out)


@pytest.mark.parametrize("channels", [1, 3])
def test_apply_transform_keeps_the_channels_first_layout(channels: int) -> None:
    """[C, S, S] in, [C, S, S] out; RGB channels move together (one transform for the whole image)."""
    image = stroke_pools(channels=channels)[0][0]
    out = apply_transform(classic_transform(ALBUMENTATIONS, seed=3), image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    if channels == 3:
        assert np.array_equal(out[0], out[1]) and np.array_equal(out[0], out[2])
    else:
        plain = classic_transform(ALBUMENTATIONS, seed=3)(image=image[0])["image"]
        np.testing.assert_array_equal(out[0], plain)


def test_pair_batches_augment_reproducibly() -> None:
    pools, cfg = stroke_pools(), ALBUMENTATIONS
    plain = batches(PairBatches(pools, batch_classes=4, seed=0), 3)
    dataset = PairBatches(pools, batch_classes=4, seed=0, transform=classic_transform(cfg, seed=0))
    augmented = batches(dataset, 3)
    for (p1, p2), (a1, a2) in zip(plain, augmented, strict=True):
        assert a1.shape == p1.shape and float(a1.min()) >= 0 and float(a1.max()) <= 1
        assert not torch.equal(a1, p1) and not torch.equal(a2, p2)
    # A second pass, and a fresh transform with another Compose seed, replay the same augmentations:
    # PairBatches seeds the transform from its own seed.
    again = batches(PairBatches(pools, batch_classes=4, seed=0, transform=classic_transform(cfg, seed=99)), 3)
    for replay in (batches(dataset, 3), again):
        for (a1, a2), (b1, b2) in zip(augmented, replay, strict=True):
            assert torch.equal(a1, b1) and torch.equal(a2, b2)
    other = batches(PairBatches(pools, batch_classes=4, seed=1, transform=classic_transform(cfg, seed=0)), 1)
    assert not torch.equal(other[0][0], augmented[0][0])


def albumentations_draws(cfg: ClassicAugmentConfig, image: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n draws of albumentations' own Affine for `cfg`: (its matrices [n, 3, 3], its output images [n, S, S])."""
    compose = A.Compose(classic_transform(ALBUMENTATIONS, seed=0).transforms, seed=0, save_applied_params=True)
    outs = [compose(image=image) for _ in range(n)]
    return (np.stack([o["applied_transforms"][0][1]["matrix"] for o in outs]), np.stack([o["image"] for o in outs]))


def test_the_tensor_engine_warps_as_albumentations_does() -> None:
    """Given albumentations' matrices, `warp_affine` gives its images, up to its rounding to uint8."""
    image = stroke_pools()[0][0][0]
    matrices, expected = albumentations_draws(ALBUMENTATIONS, image, 16)
    batch = to_tensor(np.repeat(image[None, None], 16, axis=0))
    out = warp_affine(batch, torch.from_numpy(matrices))[:, 0].numpy() * 255
    assert np.abs(out - expected).max() <= 0.5 + 1e-3
    assert np.abs(out - image).max() > 100  # they moved the strokes


def test_the_tensor_engine_draws_albumentations_distribution() -> None:
    """Rotation, shear, scale and translation drawn for a batch at once follow A.Affine's draws per image:
    the deciles of every matrix entry agree within sampling noise (4,000 draws each)."""
    image = stroke_pools()[0][0][0]
    theirs, _ = albumentations_draws(ALBUMENTATIONS, image, 4000)
    ours = BatchAffine(ClassicAugmentConfig(), seed=1).matrices(4000, SIZE, SIZE).numpy()
    deciles = np.linspace(0.1, 0.9, 9)
    for (i, j), tolerance in {(0, 0): 0.015, (0, 1): 0.02, (1, 0): 0.02, (1, 1): 0.015, (0, 2): 0.35,
                              (1, 2): 0.35}.items():
        gap = np.abs(np.quantile(ours[:, i, j], deciles) - np.quantile(theirs[:, i, j], deciles)).max()
        assert gap < tolerance, f"matrix entry ({i}, {j}): deciles differ by {gap:.3f}"
    # and a wrong distribution fails the same check: half the rotation range
    narrow = BatchAffine(ClassicAugmentConfig(rotate=5.0, shear=7.5), seed=1).matrices(4000, SIZE, SIZE).numpy()
    assert np.abs(np.quantile(narrow[:, 0, 1], deciles) - np.quantile(theirs[:, 0, 1], deciles)).max() > 0.05


def test_the_tensor_engine_is_seeded_and_replays_after_reset() -> None:
    batch = to_tensor(np.stack([p[0] for p in stroke_pools(channels=3)]))
    transform = BatchAffine(ClassicAugmentConfig(), seed=3)
    first, second = transform.batch(batch), transform.batch(batch)
    assert first.shape == batch.shape and not torch.equal(first, second)  # each batch draws afresh
    assert torch.equal(BatchAffine(ClassicAugmentConfig(), seed=3).batch(batch), first)
    assert not torch.equal(BatchAffine(ClassicAugmentConfig(), seed=4).batch(batch), first)
    assert torch.equal(first[:, 0], first[:, 2])  # RGB channels move together
    transform.reset()
    assert torch.equal(transform.batch(batch), first)


def test_elastic_distortions_need_the_albumentations_engine() -> None:
    with pytest.raises(ParamsError, match=r"`augment\.engine`.*'albumentations' when augment\.elastic_p > 0"):
        from_dict(ClassicAugmentConfig, {**dataclasses.asdict(ClassicAugmentConfig()), "elastic_p": 0.5}, "augment")
    cfg = from_dict(ClassicAugmentConfig, {**dataclasses.asdict(ALBUMENTATIONS), "elastic_p": 0.5}, "augment")
    assert isinstance(classic_transform(cfg, seed=0), A.Compose)


@pytest.mark.parametrize("engine", ["tensor", "albumentations"])
def test_fit_siamese_with_either_engine_is_reproducible(engine: str) -> None:
    """The same seed trains the same weights; the transforms changed what it trained on."""
    pools, cfg = stroke_pools(), SiameseConfig(channels=8, embedding_dim=16, batch_classes=4, max_steps=4)
    trainer_cfg = TrainerConfig(precision="32-true", channels_last=False)
    augment = ClassicAugmentConfig(engine=engine)  # type: ignore[arg-type]
    transform = classic_transform(augment, cfg.seed)
    runs = [fit_siamese(pools, cfg, trainer_cfg, [], transform=t, enable_progress_bar=False)
            for t in (transform, transform, classic_transform(augment, cfg.seed), None)]
    weights = [torch.cat([p.flatten() for p in net.parameters()]) for net in runs]
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])
    assert not torch.equal(weights[0], weights[3])


# ---------------------------------------------------------------------------- training: overfit a tiny set


N_CLASSES, STEPS = 8, 60


def noisy_pools() -> list[np.ndarray]:
    """8 classes of fixed random binary 1 x 28 x 28 images, two noisy copies each."""
    rng = np.random.default_rng(0)
    base = (rng.random((N_CLASSES, 1, SIZE, SIZE)) < 0.3).astype(np.uint8) * 255
    pools = []
    for image in base:
        copies = []
        for _ in range(2):
            copy = image.copy()
            flip = rng.random(image.shape) < 0.05
            copy[flip] = 255 - copy[flip]
            copies.append(copy)
        pools.append(np.stack(copies))
    return pools


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))  # type: ignore[index]


@pytest.fixture(scope="module", params=LOSSES)
def trained(request: pytest.FixtureRequest) -> tuple[SiameseNet, list[float], list[np.ndarray]]:
    """A tiny net trained on `noisy_pools` with each loss: (net, loss per step, pools)."""
    pools = noisy_pools()
    cfg = SiameseConfig(loss=request.param, channels=16, embedding_dim=32, batch_classes=N_CLASSES, max_steps=STEPS)
    torch.manual_seed(0)
    net = SiameseNet(SIZE, cfg.channels, cfg.embedding_dim, cfg.loss)
    recorder = LossRecorder()
    trainer = pl.Trainer(max_steps=STEPS, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[recorder])
    loader = torch.utils.data.DataLoader(PairBatches(pools, N_CLASSES, seed=0), batch_size=None)
    trainer.fit(SiameseModule(net, cfg), loader)
    return net.eval(), recorder.losses, pools


def test_overfits_a_tiny_set(trained: tuple[SiameseNet, list[float], list[np.ndarray]]) -> None:
    _, losses, _ = trained
    assert len(losses) == STEPS
    assert all(np.isfinite(losses))
    final = float(np.mean(losses[-5:]))
    assert final < 0.5 * losses[0], f"loss went from {losses[0]:.3f} to only {final:.3f}"


def test_classifier_predicts_the_support_labels(trained: tuple[SiameseNet, list[float], list[np.ndarray]]) -> None:
    net, _, pools = trained
    labels = np.array([17, 3, 12, 5, 40, 8, 21, 30])  # any label values, not in order
    first = to_tensor(np.stack([p[0] for p in pools]))
    second = to_tensor(np.stack([p[1] for p in pools]))
    classifier = SiameseClassifier(net)
    classifier.process_support(first, labels)
    np.testing.assert_array_equal(classifier.support_labels, np.sort(labels))
    assert classifier.scores(first).shape == (N_CLASSES, N_CLASSES)
    np.testing.assert_array_equal(classifier.predict(first), labels)
    np.testing.assert_array_equal(classifier.predict(second), labels)  # the other noisy copy

    # Two drawings per class in the support set: still one score column per class.
    classifier.process_support(torch.cat([first, second]), np.concatenate([labels, labels]))
    assert classifier.scores(second).shape == (N_CLASSES, N_CLASSES)
    np.testing.assert_array_equal(classifier.predict(second), labels)


def test_classifier_needs_a_support_set_first() -> None:
    classifier = SiameseClassifier(tiny_net("contrastive"))
    with pytest.raises(RuntimeError, match="process_support"):
        classifier.scores(random_images(2, seed=0))
    with pytest.raises(RuntimeError, match="process_support"):
        classifier.predict(random_images(2, seed=0))


# ---------------------------------------------------------------------------- the network follows the data


SIZES, CHANNELS = [28, 32, 48, 64, 84], [1, 3]


@pytest.mark.parametrize("in_channels", CHANNELS)
@pytest.mark.parametrize("image_size", SIZES)
def test_any_size_and_channels_embed(image_size: int, in_channels: int) -> None:
    """[B, C, S, S] for S in 28..84 and C = 1 or 3 -> embeddings [B, D]; the pairwise score [B]."""
    net = tiny_net("contrastive", image_size=image_size, in_channels=in_channels)
    assert net.config["in_channels"] == in_channels and net.image_size == image_size
    a = random_images(3, seed=1, size=image_size, channels=in_channels)
    b = random_images(3, seed=2, size=image_size, channels=in_channels)
    with torch.no_grad():
        e = net.embed(a)
        assert e.shape == (3, 16) and torch.isfinite(e).all()
        assert net(a, b).shape == (3,)
    assert embed_all(net, a, batch_size=2).shape == (3, 16)


@pytest.mark.parametrize("image_size", [32, 84])
def test_rgb_bce_net_scores_pairs(image_size: int) -> None:
    net = tiny_net("bce", image_size=image_size, in_channels=3)
    a, b = (random_images(2, seed=s, size=image_size, channels=3) for s in (1, 2))
    with torch.no_grad():
        assert net.similarity(net.embed(a), net.embed(b)).shape == (2, 2)


def test_a_grayscale_net_refuses_rgb_images() -> None:
    with pytest.raises(RuntimeError):
        tiny_net("contrastive", image_size=32)(random_images(2, 0, 32, 3), random_images(2, 1, 32, 3))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(("image_size", "in_channels"), [(28, 3), (48, 1), (84, 3)])
def test_training_step_on_a_tiny_batch(loss: str, image_size: int, in_channels: int) -> None:
    """One loss and backward pass through the network, for each loss, at other sizes and channels."""
    cfg = SiameseConfig(loss=loss, channels=8, embedding_dim=16, batch_classes=3)
    net = tiny_net(loss, image_size=image_size, in_channels=in_channels).train()
    module = SiameseModule(net, cfg)
    x1, x2 = (random_images(3, seed=s, size=image_size, channels=in_channels) for s in (1, 2))
    loss_value = module.training_step((x1, x2), 0)
    assert loss_value.shape == () and torch.isfinite(loss_value)
    loss_value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


def test_rgb_checkpoint_round_trip(tmp_path: Path) -> None:
    """An RGB 32-px network saved and loaded gives the same embeddings and scores; extra comes back as saved."""
    net = tiny_net("bce", seed=5, image_size=32, in_channels=3)
    extra = {"variant": "gan", "image_spec": {"size": 32, "channels": 3, "invert": False}}
    save_siamese(net, tmp_path / FILENAME, extra=extra)
    loaded, got = load_siamese(tmp_path / FILENAME)
    assert got == extra
    assert loaded.config == net.config and loaded.config["in_channels"] == 3
    x, y = random_images(4, seed=1, size=32, channels=3), random_images(4, seed=2, size=32, channels=3)
    with torch.no_grad():
        assert torch.equal(loaded.embed(x), net.embed(x))
        assert torch.equal(loaded(x, y), net(x, y))


def test_fit_siamese_takes_the_pools_channels_and_size() -> None:
    """fit_siamese builds the network for its pools: RGB 32 x 32 pools give an RGB 32-px network."""
    rng = np.random.default_rng(0)
    pools = [(rng.random((2, 3, 32, 32)) < 0.3).astype(np.uint8) * 255 for _ in range(4)]
    cfg = SiameseConfig(channels=8, embedding_dim=16, batch_classes=4, max_steps=2)
    trainer_cfg = TrainerConfig(precision="32-true", channels_last=False)
    net = fit_siamese(pools, cfg, trainer_cfg, [])
    assert net.config["in_channels"] == 3 and net.image_size == 32
    with torch.no_grad():
        assert net.eval().embed(to_tensor(pools[0])).shape == (2, 16)


# ---------------------------------------------------------------------------- the prototypical loss, rotated classes


def test_proto_loss_is_the_softmax_over_the_batch_classes_both_ways() -> None:
    """Row i of the first drawings against all P second drawings: cross-entropy with target i, and back."""
    cfg = SiameseConfig(loss="proto", channels=8, embedding_dim=16, batch_classes=4, temperature=0.2)
    module = SiameseModule(tiny_net("proto"), cfg)
    x1, x2 = random_images(4, seed=1), random_images(4, seed=2)
    with torch.no_grad():
        loss = module.training_step((x1, x2), 0)
        sim = module.net.similarity(module.net.embed(x1), module.net.embed(x2)) / 0.2
    log_p_rows, log_p_cols = sim.log_softmax(1).diagonal(), sim.log_softmax(0).diagonal()
    expected = -(log_p_rows.mean() + log_p_cols.mean()) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_proto_loss_is_low_when_twins_match_and_high_when_swapped() -> None:
    cfg = SiameseConfig(loss="proto", channels=8, embedding_dim=16, batch_classes=4, temperature=0.1)
    module = SiameseModule(tiny_net("proto"), cfg)
    x = random_images(4, seed=3)
    with torch.no_grad():
        same = float(module.training_step((x, x), 0))
        swapped = float(module.training_step((x, x[[1, 2, 3, 0]]), 0))
    assert same < swapped


@pytest.mark.parametrize("temperature", [0, -0.1])
def test_temperature_must_be_positive(temperature: float) -> None:
    with pytest.raises(ParamsError, match=r"siamese\.temperature"):
        from_dict(SiameseConfig, {"temperature": temperature}, "siamese")


def test_rotated_classes_are_new_classes_of_each_pool() -> None:
    pools = [random_images(n, seed=n).mul(255).to(torch.uint8).numpy() for n in (1, 3)]
    rotated = with_rotated_classes(pools)
    assert len(rotated) == 8 and [len(p) for p in rotated] == [1, 3] * 4
    assert rotated[0] is pools[0] and rotated[1] is pools[1]
    for k in (1, 2, 3):  # pools 2k and 2k + 1: every pool turned k quarters, counter-clockwise
        for p, r in zip(pools, rotated[2 * k: 2 * k + 2], strict=True):
            np.testing.assert_array_equal(r, np.rot90(p, k, axes=(2, 3)))
            assert r.flags.c_contiguous
    np.testing.assert_array_equal(rotated[2][0, 0, 0, :], pools[0][0, 0, :, -1])  # top row = old right column


def test_rotated_classes_train_on_four_times_the_classes() -> None:
    """With rotated_classes a batch may hold more classes than the pools: it draws from their rotations too."""
    pools = noisy_pools()[:3]
    cfg = SiameseConfig(channels=8, embedding_dim=16, batch_classes=12, max_steps=2, rotated_classes=True)
    net = fit_siamese(pools, cfg, TrainerConfig(precision="32-true", channels_last=False), [])
    assert isinstance(net, SiameseNet)
    with pytest.raises(ValueError, match=r"^siamese\.batch_classes=12 is larger than the 3 training classes"):
        fit_siamese(pools, dataclasses.replace(cfg, rotated_classes=False),
                    TrainerConfig(precision="32-true", channels_last=False), [])
    # the reference embedding's section is named as such, not as `siamese`
    with pytest.raises(ValueError, match=r"^reference\.batch_classes=12 is larger than the 3 training classes"):
        fit_siamese(pools, dataclasses.replace(cfg, rotated_classes=False),
                    TrainerConfig(precision="32-true", channels_last=False), [], params_key="reference")


def test_a_diverging_fit_stops_with_the_learning_rate_to_lower() -> None:
    """A learning rate far too high makes the loss NaN within steps: the fit stops there, naming the step and the
    param to lower, instead of training on and saving a network that scores chance."""
    rng = np.random.default_rng(0)
    pools = [(rng.random((3, 1, 28, 28)) < 0.3).astype(np.uint8) * 255 for _ in range(4)]
    cfg = SiameseConfig(channels=8, embedding_dim=16, batch_classes=4, max_steps=50, lr=1e6)
    with pytest.raises(TrainingDiverged, match=r"siamese classifier: training diverged at step \d+, train/loss is "
                                               r"nan; lower `siamese.lr` \(now 1e\+06\)"):
        fit_siamese(pools, cfg, TrainerConfig(precision="32-true", channels_last=False), [],
                    enable_progress_bar=False)
    fit_siamese(pools, dataclasses.replace(cfg, lr=1e-3), TrainerConfig(precision="32-true", channels_last=False),
                [], enable_progress_bar=False)  # the same fit at a sane rate runs to the end


def _class_pools(n: int) -> list[np.ndarray]:
    """n classes of 3 images each, every image unlike any other: [3, 1, SIZE, SIZE] uint8 per class."""
    return [np.full((3, 1, SIZE, SIZE), 40 * c, np.uint8) + np.arange(3, dtype=np.uint8)[:, None, None, None]
            for c in range(n)]


def _first_batches(rank: int, world: int, folder: Path) -> None:
    """One process of a real gloo process group: the first batches of each stream, as training would draw them."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder / 'group'}", rank=rank,
                                         world_size=world)
    try:
        pools = _class_pools(6)
        pairs = PairBatches(pools, 2, seed=3)
        pair = [torch.cat(b) for b in islice(iter(pairs), 3)]
        # in a spawned loader worker, which is not in the process group: the stream knows its place all the same
        worker_pair = next(iter(torch.utils.data.DataLoader(pairs, batch_size=None, num_workers=1)))
        images = np.concatenate(pools)
        labels = np.repeat(np.arange(6), 3)
        loader = torch.utils.data.DataLoader(SameClassPairs(images, labels, 5, seed=3), batch_size=None, num_workers=1)
        same = next(iter(loader))[0]
        torch.save((pair, torch.cat(worker_pair), same), folder / f"rank{rank}.pt")
        with pytest.raises(ValueError, match=r"siamese.batch_classes=4 x 2 processes = 8 classes a step is larger "
                                             r"than the 6 training classes; lower it to at most 3"):
            next(iter(PairBatches(pools, 4, seed=3)))
    finally:
        torch.distributed.destroy_process_group()


def test_the_processes_of_a_distributed_run_share_one_global_batch(tmp_path: Path) -> None:
    """Under DDP each process keeps its slice of one global pair batch: rank 0's and rank 1's batches, in rank
    order, are the batch a single process draws with twice the classes (also from a loader worker), so the
    gathered loss sees what one process would. The generators' streams are each process's own: rank 0 draws
    exactly what a single process draws, rank 1 other batches."""
    torch.multiprocessing.spawn(_first_batches, args=(2, tmp_path), nprocs=2)
    (pair0, worker0, same0), (pair1, worker1, same1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    pools = _class_pools(6)
    single = [torch.cat(b) for b in islice(iter(PairBatches(pools, 4, seed=3)), 3)]
    for step in range(3):  # [x1; x2] of 2 classes on each rank, of 4 in one process
        x1 = torch.cat([pair0[step][:2], pair1[step][:2]])
        x2 = torch.cat([pair0[step][2:], pair1[step][2:]])
        assert torch.equal(torch.cat([x1, x2]), single[step])
    assert torch.equal(torch.cat([worker0[:2], worker1[:2], worker0[2:], worker1[2:]]), single[0])
    labels = np.repeat(np.arange(6), 3)
    single_same = next(iter(torch.utils.data.DataLoader(SameClassPairs(np.concatenate(pools), labels, 5, seed=3),
                                                        batch_size=None, num_workers=1)))[0]
    assert torch.equal(same0, single_same) and not torch.equal(same0, same1)


def test_hard_mining_picks_the_hardest_negative_at_bf16_resolution_in_either_precision() -> None:
    """Row i's negative is the most similar other class; similarities closer than bf16 resolves are a tie that goes
    to the first column, whether the matrix is fp32 (32-true) or bf16 (autocast), and the matrix is left as it was."""
    sim = torch.tensor([[0.90, 0.20, 0.70, 0.7001],   # 0.7 and 0.7001 round to one bf16 value: the first wins
                        [0.10, 0.95, 0.30, 0.60],
                        [0.50, 0.40, 0.99, 0.45],
                        [0.30, 0.80, 0.20, 0.97]])
    before = sim.clone()
    expected = torch.tensor([2, 3, 0, 1])
    torch.testing.assert_close(pick_negatives(sim, "hard"), expected, rtol=0, atol=0)
    torch.testing.assert_close(pick_negatives(sim.bfloat16(), "hard"), expected, rtol=0, atol=0)
    torch.testing.assert_close(sim, before, rtol=0, atol=0)
    random = pick_negatives(sim, "random", torch.Generator().manual_seed(0))
    assert (random != torch.arange(4)).all()


def test_the_folded_copy_embeds_as_the_network_and_leaves_it_as_it_was() -> None:
    """`embed_all` embeds through `folded`: BatchNorm folded into the convolutions, same embeddings within rounding."""
    torch.manual_seed(0)
    net = SiameseNet(SIZE, channels=8, embedding_dim=16)
    for m in net.modules():  # statistics and affine parameters a trained network has, not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = random_images(32, seed=3)
    copy = folded(net.train())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules()) and not copy.training
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with torch.no_grad():
        expected = net.eval().embed(x)
        assert torch.allclose(copy.embed(x), expected, atol=1e-5)
    assert torch.allclose(embed_all(net, x).float(), expected, atol=1e-5 if not bf16_is_fast(x.device) else 2e-2)
