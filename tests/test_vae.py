"""Exemplar VAE, the generator registry, synthesis and same-class pairs; generators that follow the data
(any image size from 28 to 84, grayscale or RGB)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from pipeline.checkpoints import FILENAME, CheckpointError, read_checkpoint
from pipeline.classifiers.network import SiameseNet, save_siamese
from pipeline.config import ParamsError, TrainerConfig, from_dict
from pipeline.data.batches import SameClassPairs
from pipeline.data.fewshot import FewShotSet
from pipeline.generators import CONFIGS, get_family, load_generator, save_generator
from pipeline.generators.blocks import multiscale_error
from pipeline.generators.module import MODULES, VAEModule
from pipeline.generators.synthesis import sample_grid, synthesize_from_exemplars
from pipeline.generators.training import fit_generator
from pipeline.generators.vae import ExemplarVAE, VAEConfig, build
from pipeline.training import TrainingDiverged
from tests.drawings import blobs

SIZE, LATENT, WIDTHS = 16, 4, (8, 16)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread: None) -> None:
    """Tiny networks: see conftest.single_thread."""


def tiny_vae(seed: int = 0, identity: bool = False) -> ExemplarVAE:
    """A small VAE; unless `identity`, its flow layer is randomised so that z changes the drawing."""
    torch.manual_seed(seed)
    model = ExemplarVAE(SIZE, latent_dim=LATENT, widths=WIDTHS, max_displacement=0.35)
    if not identity:
        torch.nn.init.normal_(model.to_flow.weight, std=0.3)
        torch.nn.init.normal_(model.to_flow.bias, std=0.3)
    return model.eval()


def drawings(n: int, seed: int = 0) -> torch.Tensor:
    return blobs(n, SIZE, seed)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- the model


def test_forward_shapes() -> None:
    model = tiny_vae()
    x, y = drawings(3, seed=0), drawings(3, seed=1)
    with torch.no_grad():
        recon, mean, logvar = model(x, y)
    assert recon.shape == (3, 1, SIZE, SIZE)
    assert mean.shape == (3, LATENT) and logvar.shape == (3, LATENT)
    assert torch.isfinite(recon).all() and torch.isfinite(mean).all() and torch.isfinite(logvar).all()


def test_generate_shape_and_range() -> None:
    model = tiny_vae()
    x = drawings(2)
    out = model.generate(x, 5, generator=seeded(0))
    assert out.shape == (2, 5, 1, SIZE, SIZE)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.allclose(out[:, 0], x), "a randomised flow should move the strokes"
    assert not torch.allclose(out[:, 0], out[:, 1]), "two samples of one exemplar should differ"


def test_initial_decoder_is_the_identity_warp() -> None:
    model = tiny_vae(identity=True)
    x = drawings(3)
    with torch.no_grad():
        out = model.decode(x, torch.randn(3, LATENT, generator=seeded(1)) * 3)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    copies = model.generate(x, 2, generator=seeded(0))
    torch.testing.assert_close(copies, x[:, None].expand(-1, 2, -1, -1, -1), atol=1e-5, rtol=0)


def test_generate_is_seeded_by_its_generator() -> None:
    model, x = tiny_vae(), drawings(2)
    first = model.generate(x, 3, generator=seeded(5))
    assert torch.equal(first, model.generate(x, 3, generator=seeded(5)))
    assert not torch.allclose(first, model.generate(x, 3, generator=seeded(6)))


@pytest.mark.parametrize(
    ("image_size", "widths", "factor"), [(30, (16, 32, 64), 4), (17, (8, 16), 2), (28, (8, 8, 8, 8), 8)]
)
def test_image_size_must_divide(image_size: int, widths: tuple[int, ...], factor: int) -> None:
    with pytest.raises(ValueError, match=f"image_size={image_size} must be divisible by {factor}"):
        ExemplarVAE(image_size, latent_dim=2, widths=widths)


# ---------------------------------------------------------------------------- registry and checkpoints


def test_save_load_round_trip(tmp_path: Path) -> None:
    model, x = tiny_vae(), drawings(2)
    path = tmp_path / FILENAME
    save_generator("vae", model, path, extra={"steps": 7})
    loaded, extra = load_generator(path)  # nothing but the file: family and config come with it
    assert isinstance(loaded, ExemplarVAE) and not loaded.training
    expected = {"image_size": SIZE, "latent_dim": LATENT, "widths": WIDTHS, "max_displacement": 0.35, "channels": 1}
    assert loaded.config == expected
    assert extra == {"family": "vae", "steps": 7}
    assert torch.equal(loaded.generate(x, 3, generator=seeded(2)), model.generate(x, 3, generator=seeded(2)))
    config, _ = read_checkpoint(path, "generator")
    assert ExemplarVAE(**config).config == expected  # the stored config alone builds the model
    folder, _ = load_generator(tmp_path)  # the model folder holding model.safetensors
    assert torch.equal(folder.generate(x, 3, generator=seeded(2)), model.generate(x, 3, generator=seeded(2)))


def test_load_generator_refuses_a_siamese_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "siamese.safetensors"
    save_siamese(SiameseNet(16, channels=4, embedding_dim=4), path)
    with pytest.raises(CheckpointError, match=r"siamese\.safetensors: a 'siamese' checkpoint, not a generator"):
        load_generator(path)


@pytest.mark.parametrize("content", ["pickle", "bytes"])
def test_load_generator_refuses_a_file_that_is_no_checkpoint(content: str, tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    if content == "pickle":
        torch.save({"kind": "generator", "family": "vae", "state_dict": tiny_vae().state_dict()}, path)
    else:
        path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a generator checkpoint"):
        load_generator(path)


def test_load_generator_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothing\.safetensors: generator checkpoint not found"):
        load_generator(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="generator checkpoint not found"):
        load_generator(tmp_path)  # a folder without a model


def test_unknown_family_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown generator 'nope'; available: gan, vae"):
        get_family("nope")


def test_every_generator_family_has_a_training_procedure() -> None:
    assert set(MODULES) == set(CONFIGS)
    assert all(issubclass(m, pl.LightningModule) for m in MODULES.values())
    assert all(get_family(name).config is config for name, config in CONFIGS.items())  # a network for each


def test_vae_family_builds_its_model() -> None:
    family = get_family("vae")
    assert family is get_family("vae")  # built once
    model = family.build(VAEConfig(latent_dim=3, widths=(8, 16)), 16)
    assert isinstance(model, family.model)
    assert model.config == {"image_size": 16, "latent_dim": 3, "widths": (8, 16), "max_displacement": 0.35,
                            "channels": 1}
    rgb = family.build(VAEConfig(latent_dim=3, widths=(8, 16)), 32, 3)
    assert rgb.config["channels"] == 3 and rgb.config["image_size"] == 32


# ---------------------------------------------------------------------------- config


def test_config_from_params_turns_lists_into_tuples() -> None:
    cfg = from_dict(VAEConfig, {"widths": [8, 16], "scales": [1, 2], "beta": 0}, "generator.vae")
    assert cfg.widths == (8, 16) and cfg.scales == (1, 2) and cfg.beta == 0.0


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"beta": -0.5}, "generator.vae.beta"),
        ({"widths": []}, "generator.vae.widths"),
        ({"widths": [32]}, "generator.vae.widths"),
        ({"widths": [16, 0]}, "generator.vae.widths"),
        ({"scales": []}, "generator.vae.scales"),
        ({"scales": [0, 2]}, "generator.vae.scales"),
        ({"latent_dim": 0}, "generator.vae.latent_dim"),
        ({"lr": 0}, "generator.vae.lr"),
        ({"max_displacement": 0}, "generator.vae.max_displacement"),
    ],
)
def test_config_rejects_bad_values(values: dict[str, object], key: str) -> None:
    with pytest.raises(ParamsError, match=f"`{key}`"):
        from_dict(VAEConfig, values, "generator.vae")


# ---------------------------------------------------------------------------- the loss


def test_multiscale_error_known_values() -> None:
    zeros = torch.zeros(1, 1, 4, 4)
    ones = torch.ones(1, 1, 4, 4)
    assert float(multiscale_error(ones, ones, (1, 2, 4))) == 0.0
    # A constant difference counts the same at every scale: 16 pixels x 1, 4 x 1 x 4, 1 x 1 x 16.
    assert float(multiscale_error(ones, zeros, (1,))) == 16.0
    assert float(multiscale_error(ones, zeros, (1, 2, 4))) == 48.0
    # One pixel off by 1: 1 + (1/4)^2 x 4 + (1/16)^2 x 16.
    dot = zeros.clone()
    dot[0, 0, 1, 2] = 1.0
    assert float(multiscale_error(dot, zeros, (1, 2, 4))) == pytest.approx(1 + 0.25 + 0.0625)
    # The mean over the batch: one equal pair, one constant difference.
    assert float(multiscale_error(torch.cat([ones, ones]), torch.cat([ones, zeros]), (1,))) == 8.0


def test_multiscale_error_is_positive_for_different_images() -> None:
    x, y = drawings(2, seed=0), drawings(2, seed=1)
    assert float(multiscale_error(x, y, (1, 2, 4))) > 0


def test_overfits_a_two_pixel_shift() -> None:
    """Targets are the exemplars moved 2 pixels: warping learns it, copying the exemplar cannot."""
    steps, x = 80, drawings(8)
    target = torch.roll(x, shifts=(2, 2), dims=(2, 3))  # the empty border makes the roll a shift
    cfg = VAEConfig(latent_dim=LATENT, widths=WIDTHS, batch_size=8, lr=2e-3, max_steps=steps)
    torch.manual_seed(0)
    model = build(cfg, SIZE)
    trainer = pl.Trainer(max_steps=steps, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    # Batches as SameClassPairs gives them: exemplars [B, C, S, S], targets [B, 1, C, S, S].
    batches = [(x, target[:, None])] * steps
    trainer.fit(VAEModule(model, cfg), torch.utils.data.DataLoader(batches, batch_size=None))

    assert float(trainer.callback_metrics["train/reconstruction_vs_copy"]) < 0.5
    model.eval()
    with torch.no_grad():
        mean, _ = model.encode(x, target)
        ratio = multiscale_error(model.decode(x, mean), target, cfg.scales) / multiscale_error(x, target, cfg.scales)
    assert float(ratio) < 0.5


# ---------------------------------------------------------------------------- synthesis


def uint8_exemplars(n: int) -> np.ndarray:
    """[n, 1, S, S] uint8 exemplars."""
    return (drawings(n) * 255).round().to(torch.uint8).numpy()


def test_synthesize_shapes_and_seed() -> None:
    model, exemplars = tiny_vae(), uint8_exemplars(3)
    out = synthesize_from_exemplars(model, exemplars, 4, generator=seeded(0), batch_size=2)
    assert out.shape == (3, 4, 1, SIZE, SIZE) and out.dtype == np.uint8
    again = synthesize_from_exemplars(model, exemplars, 4, generator=seeded(0), batch_size=2)
    other = synthesize_from_exemplars(model, exemplars, 4, generator=seeded(1), batch_size=2)
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)


def test_identity_generator_synthesizes_copies() -> None:
    exemplars = uint8_exemplars(3)
    out = synthesize_from_exemplars(tiny_vae(identity=True), exemplars, 2, generator=seeded(0), batch_size=2)
    np.testing.assert_array_equal(out, np.repeat(exemplars[:, None], 2, axis=1))


def test_synthesize_zero_and_negative_counts() -> None:
    model, exemplars = tiny_vae(), uint8_exemplars(3)
    empty = synthesize_from_exemplars(model, exemplars, 0, generator=seeded(0))
    assert empty.shape == (3, 0, 1, SIZE, SIZE) and empty.dtype == np.uint8
    with pytest.raises(ValueError, match="n_per_exemplar=-1"):
        synthesize_from_exemplars(model, exemplars, -1, generator=seeded(0))


def grid_rows(n_rows: int, n_columns: int, channels: int = 1) -> list[tuple[str, np.ndarray, np.ndarray]]:
    exemplar = np.full((channels, SIZE, SIZE), 255, np.uint8)
    return [(f"class {r}", exemplar, np.zeros((n_columns, channels, SIZE, SIZE), np.uint8)) for r in range(n_rows)]


def test_sample_grid_grows_with_rows_and_columns() -> None:
    base = sample_grid(grid_rows(1, 3), scale=1)
    assert isinstance(base, Image.Image)
    taller, wider = sample_grid(grid_rows(3, 3), scale=1), sample_grid(grid_rows(1, 6), scale=1)
    assert taller.width == base.width and taller.height == 3 * base.height
    assert wider.height == base.height and wider.width == base.width + 3 * (SIZE + 2)
    scaled = sample_grid(grid_rows(1, 3), scale=3)
    assert scaled.size == (3 * base.width, 3 * base.height)


def test_sample_grid_draws_strokes_dark_on_light() -> None:
    solid = np.full((1, SIZE, SIZE), 255, np.uint8)  # every pixel a stroke
    rows = [("", solid, np.stack([solid, solid, np.zeros_like(solid)])) for _ in range(2)]  # no label text
    grid = np.asarray(sample_grid(rows, scale=1))
    assert (grid == 0).sum() == 2 * 3 * SIZE * SIZE, "each stroke pixel once in black, nothing else"
    assert (grid == 255).sum() > 2 * SIZE * SIZE, "the background and the empty drawing stay white"


def test_sample_grid_of_rgb_rows_is_rgb() -> None:
    grid = sample_grid(grid_rows(2, 3, channels=3), scale=1)
    assert grid.mode == "RGB" and grid.size == sample_grid(grid_rows(2, 3), scale=1).size
    assert (np.asarray(grid) == 0).all(axis=-1).sum() == 2 * SIZE * SIZE, "each solid exemplar drawn black"


def test_sample_grid_needs_rows() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        sample_grid([])


# ---------------------------------------------------------------------------- same-class pairs


def coded_images(labels: np.ndarray, channels: int = 1) -> np.ndarray:
    """Image i [C, 4, 4] is constant with value i, so a batch tells which images it was drawn from."""
    return np.stack([np.full((channels, 4, 4), i, np.uint8) for i in range(len(labels))])


def pair_indices(x: torch.Tensor) -> np.ndarray:
    """[B, C, S, S] of coded constant images -> the image index of each."""
    values = (x * 255).round().to(torch.int64)
    assert torch.equal(values, values[:, :1, :1, :1].expand_as(values))
    return values[:, 0, 0, 0].numpy()


LABELS = np.array([3, 7, 3, 9, 7, 3, 9, 7, 9, 3])  # classes 3, 7, 9, interleaved


@pytest.mark.parametrize("channels", [1, 3])
def test_same_class_pairs_by_different_drawers(channels: int) -> None:
    dataset = SameClassPairs(coded_images(LABELS, channels), LABELS, batch_size=6, seed=0)
    seen = set()
    for exemplar, targets in islice(iter(dataset), 20):
        assert exemplar.shape == (6, channels, 4, 4) and exemplar.dtype == torch.float32
        assert targets.shape == (6, 1, channels, 4, 4) and targets.dtype == torch.float32
        a, b = pair_indices(exemplar), pair_indices(targets[:, 0])
        np.testing.assert_array_equal(LABELS[a], LABELS[b])
        assert (a != b).all()
        seen.update(a.tolist())
    assert seen == set(range(len(LABELS)))


def test_same_class_pairs_are_seeded() -> None:
    def first(seed: int) -> list[torch.Tensor]:
        return [t for batch in islice(iter(SameClassPairs(coded_images(LABELS), LABELS, 6, seed)), 3) for t in batch]

    assert all(torch.equal(a, b) for a, b in zip(first(1), first(1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first(1), first(2), strict=True))


def test_same_class_pairs_need_two_drawings_per_class() -> None:
    labels = np.array([0, 0, 1])
    with pytest.raises(ValueError, match="at least 2 images"):
        SameClassPairs(coded_images(labels), labels, batch_size=2, seed=0)


def test_same_class_pairs_with_several_targets_by_different_drawers() -> None:
    """targets=3: each exemplar comes with 3 other drawings of its class, all four distinct."""
    labels = np.array([3, 7, 3, 9, 7, 3, 9, 7, 9, 3, 7, 9])  # four drawings of each class
    dataset = SameClassPairs(coded_images(labels), labels, batch_size=6, seed=0, targets=3)
    for exemplar, others in islice(iter(dataset), 10):
        assert exemplar.shape == (6, 1, 4, 4) and others.shape == (6, 3, 1, 4, 4)
        drawn = np.stack([pair_indices(exemplar), *(pair_indices(others[:, j]) for j in range(3))], axis=1)
        assert (labels[drawn] == labels[drawn[:, :1]]).all()
        assert all(len(set(row)) == 4 for row in drawn.tolist())
    with pytest.raises(ValueError, match="at least 5 images"):
        SameClassPairs(coded_images(labels), labels, batch_size=2, seed=0, targets=4)


# ---------------------------------------------------------------------------- the generator follows the data


SIZES, CHANNELS = [28, 32, 48, 64, 84], [1, 3]


def colour_drawings(n: int, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Blob drawings [n, channels, size, size]; in RGB each channel is another drawing."""
    return torch.cat([blobs(n, size, seed + 10 * c) for c in range(channels)], dim=1)


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("image_size", SIZES)
def test_any_size_and_channels_forward_and_generate(image_size: int, channels: int) -> None:
    torch.manual_seed(0)
    model = ExemplarVAE(image_size, latent_dim=LATENT, widths=WIDTHS, channels=channels)
    torch.nn.init.normal_(model.to_flow.weight, std=0.3)
    model.eval()
    x, y = colour_drawings(2, image_size, channels, 0), colour_drawings(2, image_size, channels, 1)
    with torch.no_grad():
        recon, mean, logvar = model(x, y)
    assert recon.shape == (2, channels, image_size, image_size) and torch.isfinite(recon).all()
    assert mean.shape == logvar.shape == (2, LATENT)
    out = model.generate(x, 3, generator=seeded(0))
    assert out.shape == (2, 3, channels, image_size, image_size)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_the_warp_moves_every_channel_alike() -> None:
    """One displacement field per drawing: three equal channels stay equal after the warp."""
    torch.manual_seed(0)
    model = ExemplarVAE(32, latent_dim=LATENT, widths=WIDTHS, channels=3)
    torch.nn.init.normal_(model.to_flow.weight, std=0.3)
    grey = blobs(2, 32).expand(-1, 3, -1, -1)
    out = model.eval().generate(grey, 2, generator=seeded(0))
    assert torch.equal(out[:, :, 0], out[:, :, 1]) and torch.equal(out[:, :, 0], out[:, :, 2])


@pytest.mark.parametrize(("image_size", "channels"), [(28, 3), (48, 1), (64, 3), (84, 1)])
def test_training_step_on_a_tiny_batch(image_size: int, channels: int) -> None:
    """VAEModule's loss on a batch as SameClassPairs gives it, and its gradient, at other sizes and channels."""
    cfg = VAEConfig(latent_dim=LATENT, widths=WIDTHS, batch_size=2)
    torch.manual_seed(0)
    model = build(cfg, image_size, channels)
    exemplar = colour_drawings(2, image_size, channels, 0)
    targets = colour_drawings(2, image_size, channels, 1)[:, None]  # [B, 1, C, S, S]
    loss = VAEModule(model, cfg).training_step((exemplar, targets), 0)
    assert loss.shape == () and torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.posterior.conv_in.weight.grad is not None, "the posterior learns from the target"


def test_rgb_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = ExemplarVAE(32, latent_dim=LATENT, widths=WIDTHS, channels=3)
    torch.nn.init.normal_(model.to_flow.weight, std=0.3)
    model.eval()
    save_generator("vae", model, tmp_path / FILENAME, extra={"image_spec": {"size": 32, "channels": 3}})
    loaded, extra = load_generator(tmp_path)
    assert isinstance(loaded, ExemplarVAE) and loaded.config == model.config and loaded.channels == 3
    assert extra == {"family": "vae", "image_spec": {"size": 32, "channels": 3}}
    x, y = colour_drawings(2, 32, 3, 0), colour_drawings(2, 32, 3, 1)
    assert torch.equal(loaded.generate(x, 3, generator=seeded(1)), model.generate(x, 3, generator=seeded(1)))
    with torch.no_grad():
        assert torch.equal(loaded.encode(x, y)[0], model.encode(x, y)[0])


@pytest.mark.parametrize("channels", CHANNELS)
def test_load_at_another_image_size(channels: int, tmp_path: Path) -> None:
    """Trained at 28, drawn at 32 (or 84): the same weights, a fully convolutional model of the new size."""
    torch.manual_seed(0)
    model = ExemplarVAE(28, latent_dim=LATENT, widths=WIDTHS, channels=channels)
    torch.nn.init.normal_(model.to_flow.weight, std=0.3)
    save_generator("vae", model, tmp_path / FILENAME)
    for size in (32, 84):
        bigger, extra = load_generator(tmp_path / FILENAME, image_size=size)
        assert bigger.config == {**model.config, "image_size": size} and extra["family"] == "vae"
        for (name, p), q in zip(bigger.state_dict().items(), model.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
        out = bigger.generate(colour_drawings(2, size, channels), 4, generator=seeded(0))
        assert out.shape == (2, 4, channels, size, size)
    with pytest.raises(ValueError, match="image_size=31 must be divisible by 2"):
        load_generator(tmp_path, image_size=31)


def test_a_diverging_generator_fit_stops_with_the_rate_to_lower(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    """A learning rate far too high: the generator's fit stops at the first non-finite loss and names the rate."""
    dataset, _ = tiny_omniglot
    cfg = VAEConfig(batch_size=8, max_steps=30, lr=1e6)
    with pytest.raises(TrainingDiverged, match=r"generator vae: training diverged at step \d+, train/loss is nan; "
                                               r"lower `generator.vae.lr` \(now 1e\+06\)\. Nothing"):
        fit_generator(dataset, "vae", cfg, TrainerConfig(precision="32-true", channels_last=False), [])
