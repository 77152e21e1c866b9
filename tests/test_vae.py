"""Exemplar VAE, the generator registry, synthesis and same-class pairs."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from pipeline.config import ParamsError, from_dict
from pipeline.generators import GENERATORS, get_family, load_generator, save_generator
from pipeline.generators.blocks import SameClassPairs
from pipeline.generators.vae import ExemplarVAE, VAEConfig, VAEModule, build, multiscale_error
from pipeline.siamese import SiameseNet, save_siamese
from pipeline.synthesis import sample_grid, synthesize_from_exemplars
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
    path = tmp_path / "vae.pt"
    save_generator("vae", model, path, extra={"steps": 7})
    loaded, ckpt = load_generator(path)  # nothing but the file: family and config come with it
    assert isinstance(loaded, ExemplarVAE) and not loaded.training
    assert loaded.config == {"image_size": SIZE, "latent_dim": LATENT, "widths": WIDTHS, "max_displacement": 0.35}
    assert ckpt["family"] == "vae" and ckpt["steps"] == 7
    assert torch.equal(loaded.generate(x, 3, generator=seeded(2)), model.generate(x, 3, generator=seeded(2)))


def test_load_generator_refuses_a_siamese_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "siamese.pt"
    save_siamese(SiameseNet(16, channels=4, embedding_dim=4), str(path))
    with pytest.raises(ValueError, match=r"siamese\.pt: not a generator checkpoint"):
        load_generator(path)


def test_load_generator_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        load_generator(tmp_path / "nothing.pt")


def test_unknown_family_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown generator 'nope'; available: gan, vae"):
        get_family("nope")


def test_vae_family_builds_its_model() -> None:
    family = get_family("vae")
    assert family is GENERATORS["vae"]
    model = family.build(VAEConfig(latent_dim=3, widths=(8, 16)), 16)
    assert isinstance(model, family.model)
    assert model.config == {"image_size": 16, "latent_dim": 3, "widths": (8, 16), "max_displacement": 0.35}


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
    trainer.fit(VAEModule(model, cfg), torch.utils.data.DataLoader([(x, target)] * steps, batch_size=None))

    assert float(trainer.callback_metrics["train/reconstruction_vs_copy"]) < 0.5
    model.eval()
    with torch.no_grad():
        mean, _ = model.encode(x, target)
        ratio = multiscale_error(model.decode(x, mean), target, cfg.scales) / multiscale_error(x, target, cfg.scales)
    assert float(ratio) < 0.5


# ---------------------------------------------------------------------------- synthesis


def uint8_exemplars(n: int) -> np.ndarray:
    return (drawings(n).squeeze(1) * 255).round().to(torch.uint8).numpy()


def test_synthesize_shapes_and_seed() -> None:
    model, exemplars = tiny_vae(), uint8_exemplars(3)
    out = synthesize_from_exemplars(model, exemplars, 4, generator=seeded(0), batch_size=2)
    assert out.shape == (3, 4, SIZE, SIZE) and out.dtype == np.uint8
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
    assert empty.shape == (3, 0, SIZE, SIZE) and empty.dtype == np.uint8
    with pytest.raises(ValueError, match="n_per_exemplar=-1"):
        synthesize_from_exemplars(model, exemplars, -1, generator=seeded(0))


def grid_rows(n_rows: int, n_columns: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    exemplar = np.full((SIZE, SIZE), 255, np.uint8)
    return [(f"class {r}", exemplar, np.zeros((n_columns, SIZE, SIZE), np.uint8)) for r in range(n_rows)]


def test_sample_grid_grows_with_rows_and_columns() -> None:
    base = sample_grid(grid_rows(1, 3), scale=1)
    assert isinstance(base, Image.Image)
    taller, wider = sample_grid(grid_rows(3, 3), scale=1), sample_grid(grid_rows(1, 6), scale=1)
    assert taller.width == base.width and taller.height == 3 * base.height
    assert wider.height == base.height and wider.width == base.width + 3 * (SIZE + 2)
    scaled = sample_grid(grid_rows(1, 3), scale=3)
    assert scaled.size == (3 * base.width, 3 * base.height)


def test_sample_grid_draws_strokes_dark_on_light() -> None:
    solid = np.full((SIZE, SIZE), 255, np.uint8)  # every pixel a stroke
    rows = [("", solid, np.stack([solid, solid, np.zeros_like(solid)])) for _ in range(2)]  # no label text
    grid = np.asarray(sample_grid(rows, scale=1))
    assert (grid == 0).sum() == 2 * 3 * SIZE * SIZE, "each stroke pixel once in black, nothing else"
    assert (grid == 255).sum() > 2 * SIZE * SIZE, "the background and the empty drawing stay white"


def test_sample_grid_needs_rows() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        sample_grid([])


# ---------------------------------------------------------------------------- same-class pairs


def coded_images(labels: np.ndarray) -> np.ndarray:
    """Image i is constant with value i, so a batch tells which images it was drawn from."""
    return np.stack([np.full((4, 4), i, np.uint8) for i in range(len(labels))])


def pair_indices(x: torch.Tensor) -> np.ndarray:
    values = (x * 255).round().to(torch.int64)
    assert torch.equal(values, values[:, :, :1, :1].expand_as(values))
    return values[:, 0, 0, 0].numpy()


LABELS = np.array([3, 7, 3, 9, 7, 3, 9, 7, 9, 3])  # classes 3, 7, 9, interleaved


def test_same_class_pairs_by_different_drawers() -> None:
    dataset = SameClassPairs(coded_images(LABELS), LABELS, batch_size=6, seed=0)
    seen = set()
    for exemplar, target in islice(iter(dataset), 20):
        assert exemplar.shape == target.shape == (6, 1, 4, 4) and exemplar.dtype == torch.float32
        a, b = pair_indices(exemplar), pair_indices(target)
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
    with pytest.raises(ValueError, match="at least 2 drawings"):
        SameClassPairs(coded_images(labels), labels, batch_size=2, seed=0)


def test_same_class_pairs_with_several_targets_by_different_drawers() -> None:
    """targets=3: each exemplar comes with 3 other drawings of its class, all four distinct."""
    labels = np.array([3, 7, 3, 9, 7, 3, 9, 7, 9, 3, 7, 9])  # four drawings of each class
    dataset = SameClassPairs(coded_images(labels), labels, batch_size=6, seed=0, targets=3)
    for exemplar, others in islice(iter(dataset), 10):
        assert exemplar.shape == (6, 1, 4, 4) and others.shape == (6, 3, 4, 4)
        drawn = np.stack([pair_indices(exemplar), *(pair_indices(others[:, j:j + 1]) for j in range(3))], axis=1)
        assert (labels[drawn] == labels[drawn[:, :1]]).all()
        assert all(len(set(row)) == 4 for row in drawn.tolist())
    with pytest.raises(ValueError, match="at least 5 drawings"):
        SameClassPairs(coded_images(labels), labels, batch_size=2, seed=0, targets=4)
