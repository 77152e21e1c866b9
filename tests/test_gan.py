"""DAGAN-style GAN: generator and critic contracts, checkpoints, params, a few real training steps, and
networks that follow the data (any image size from 28 to 84, grayscale or RGB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from pipeline.checkpoints import FILENAME, load_weights, read_checkpoint
from pipeline.config import ParamsError, from_dict, load_params, section
from pipeline.data.batches import SameClassPairs
from pipeline.data.fewshot import FewShotSet
from pipeline.data.prepare import DataConfig
from pipeline.generators import get_family, load_generator, save_generator
from pipeline.generators.blocks import multiscale_errors
from pipeline.generators.gan import (
    DAGANGenerator,
    GANConfig,
    PairCritic,
    best_of_k,
    build,
    draw_target_errors,
)
from pipeline.generators.module import MODULES, GANModule
from pipeline.generators.training import expecting_unused_parameters
from tests.drawings import blobs

SIZE, NOISE, WIDTHS, FLOW = 16, 4, (8, 16), 4
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread: None) -> None:
    """Tiny networks: see conftest.single_thread."""


def tiny_generator(seed: int = 0, identity: bool = False) -> DAGANGenerator:
    """A small generator; unless `identity`, its flow layer is randomised so that the noise changes the drawing."""
    torch.manual_seed(seed)
    model = DAGANGenerator(SIZE, noise_dim=NOISE, widths=WIDTHS, max_displacement=0.35, flow_resolution=FLOW)
    if not identity:
        nn.init.normal_(model.to_flow.weight, std=0.3)
        nn.init.normal_(model.to_flow.bias, std=0.3)
    return model.eval()


def drawings(n: int, seed: int = 0) -> torch.Tensor:
    return blobs(n, SIZE, seed)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, NOISE, generator=seeded(seed))


# ---------------------------------------------------------------------------- the generator


def test_forward_and_flow_shapes() -> None:
    model, x = tiny_generator(), drawings(3)
    with torch.no_grad():
        out, flow = model(x, noise(3, 0)), model.flow(x, noise(3, 0))
    assert out.shape == (3, 1, SIZE, SIZE) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert flow.shape == (3, SIZE, SIZE, 2)
    assert float(flow.abs().max()) <= 0.35, "tanh bounds the displacement by max_displacement"
    assert float(flow.abs().max()) > 0.01, "a randomised flow layer moves the strokes"


def test_generate_shape_and_range() -> None:
    model, x = tiny_generator(), drawings(2)
    out = model.generate(x, 5, generator=seeded(0))
    assert out.shape == (2, 5, 1, SIZE, SIZE)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.allclose(out[:, 0], x), "a randomised flow should move the strokes"
    assert not torch.allclose(out[:, 0], out[:, 1]), "two noise vectors should give two drawings"


def test_zero_temperature_gives_one_drawing_per_exemplar() -> None:
    """noise ~ N(0, temperature^2 I): at temperature 0 every sample of an exemplar is the same drawing."""
    model, x = tiny_generator(), drawings(2)
    out = model.generate(x, 3, generator=seeded(0), temperature=0.0)
    with torch.no_grad():
        expected = model(x, torch.zeros(2, NOISE))
    torch.testing.assert_close(out, expected[:, None].expand(-1, 3, -1, -1, -1), atol=1e-5, rtol=0)


def test_initial_generator_is_the_identity_warp() -> None:
    """The zero-initialised flow layer: whatever the noise, the output is the exemplar (bilinear rounding only)."""
    model = tiny_generator(identity=True)
    x = drawings(3)
    with torch.no_grad():
        flow = model.flow(x, noise(3, 1) * 3)
        out = model(x, noise(3, 1) * 3)
    assert torch.equal(flow, torch.zeros_like(flow))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    copies = model.generate(x, 2, generator=seeded(0))
    torch.testing.assert_close(copies, x[:, None].expand(-1, 2, -1, -1, -1), atol=1e-5, rtol=0)


def test_the_noise_changes_the_drawing() -> None:
    model, x = tiny_generator(), drawings(1).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(x, noise(2, 0))
    assert float((out[0] - out[1]).abs().mean()) > 1e-3
    with torch.no_grad():
        same = model(x, noise(1, 0).expand(2, -1))
    torch.testing.assert_close(same[0], same[1], atol=1e-6, rtol=0)


def test_generate_is_seeded_by_its_generator() -> None:
    model, x = tiny_generator(), drawings(2)
    first = model.generate(x, 3, generator=seeded(5))
    assert torch.equal(first, model.generate(x, 3, generator=seeded(5)))
    assert not torch.allclose(first, model.generate(x, 3, generator=seeded(6)))


@pytest.mark.parametrize(
    ("image_size", "widths", "factor"), [(28, (16, 32, 64), 8), (18, (8, 16), 4), (24, (8, 8, 8, 8), 16)]
)
def test_image_size_must_divide(image_size: int, widths: tuple[int, ...], factor: int) -> None:
    with pytest.raises(ValueError, match=f"image_size={image_size} must be divisible by {factor} "
                                         f"for {len(widths)} U-Net levels"):
        DAGANGenerator(image_size, noise_dim=2, widths=widths)


def test_flow_resolution_must_fit_the_image() -> None:
    with pytest.raises(ValueError, match="flow_resolution=17 must be at most image_size=16"):
        DAGANGenerator(16, noise_dim=2, widths=(8, 16), flow_resolution=17)
    DAGANGenerator(16, noise_dim=2, widths=(8, 16), flow_resolution=16)  # the whole image is allowed


# ---------------------------------------------------------------------------- the critic


def test_critic_scores_each_pair() -> None:
    torch.manual_seed(0)
    critic = PairCritic(SIZE, width=8).eval()
    x, y = drawings(5, seed=0), drawings(5, seed=1)
    score = critic(x, y)
    assert score.shape == (5,) and torch.isfinite(score).all()
    assert not torch.allclose(critic(x, x), score), "the score depends on the drawing, not the exemplar alone"


def test_blurring_critic_judges_box_blurred_pairs() -> None:
    """critic_blur=b scores a pair as the same critic without blur scores the pair box-blurred over b x b."""
    torch.manual_seed(0)
    blurred, plain = PairCritic(SIZE, width=8, blur=3), PairCritic(SIZE, width=8)
    plain.load_state_dict(blurred.state_dict())
    blurred.eval(), plain.eval()
    exemplar, drawing = blobs(2, SIZE, seed=0), blobs(2, SIZE, seed=1)

    def box(x: torch.Tensor) -> torch.Tensor:  # mean over each pixel's 3 x 3 neighbours inside the image
        ones = torch.ones_like(x)
        return F.conv2d(x, torch.ones(1, 1, 3, 3), padding=1) / F.conv2d(ones, torch.ones(1, 1, 3, 3), padding=1)

    with torch.no_grad():
        assert torch.allclose(blurred(exemplar, drawing), plain(box(exemplar), box(drawing)), atol=1e-5)
        assert not torch.allclose(blurred(exemplar, drawing), plain(exemplar, drawing), atol=1e-3)


def test_critic_layers_are_spectrally_normalised() -> None:
    """Every convolution and linear layer is parametrized; even raw weights 10x too large act with norm ~1."""
    torch.manual_seed(0)
    critic = PairCritic(SIZE, width=8).train()
    layers = [m for m in critic.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 4
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    with torch.no_grad():
        for m in layers:
            m.parametrizations.weight.original.mul_(10.0)
    x = drawings(4)
    for _ in range(3):  # each training-mode forward refines the power-iteration estimate once
        critic(x, x)
    for m in layers:
        w = m.weight.detach()
        largest = float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2))
        assert largest == pytest.approx(1.0, abs=0.05), f"{m}: largest singular value {largest}"
        raw = m.parametrizations.weight.original.detach()
        assert float(torch.linalg.matrix_norm(raw.reshape(raw.shape[0], -1), ord=2)) > 3


# ---------------------------------------------------------------------------- registry and checkpoints


def test_save_load_round_trip(tmp_path: Path) -> None:
    model, x = tiny_generator(), drawings(2)
    path = tmp_path / FILENAME
    save_generator("gan", model, path, extra={"steps": 3})
    loaded, extra = load_generator(path)  # nothing but the file: family and config come with it
    assert isinstance(loaded, DAGANGenerator) and not loaded.training
    expected = {"image_size": SIZE, "noise_dim": NOISE, "widths": WIDTHS, "max_displacement": 0.35,
                "flow_resolution": FLOW, "channels": 1}
    config, stored_extra = read_checkpoint(path, "generator")
    assert loaded.config == expected and {**config, "widths": tuple(config["widths"])} == expected
    assert extra == stored_extra == {"family": "gan", "steps": 3}
    assert torch.equal(loaded.generate(x, 3, generator=seeded(2)), model.generate(x, 3, generator=seeded(2)))
    rebuilt = load_weights(DAGANGenerator(**config), path)  # the config alone builds a model these weights fit
    assert torch.equal(rebuilt.generate(x, 3, generator=seeded(2)), model.generate(x, 3, generator=seeded(2)))


def test_gan_family_builds_its_model() -> None:
    family = get_family("gan")
    assert family is get_family("gan")  # built once
    assert family.config is GANConfig and family.model is DAGANGenerator and MODULES["gan"] is GANModule
    model = family.build(GANConfig(noise_dim=3, widths=(8, 16), max_displacement=0.2, flow_resolution=5), 16)
    assert isinstance(model, DAGANGenerator)
    assert model.config == {"image_size": 16, "noise_dim": 3, "widths": (8, 16), "max_displacement": 0.2,
                            "flow_resolution": 5, "channels": 1}
    rgb = family.build(GANConfig(noise_dim=3, widths=(8, 16)), 32, 3)
    assert rgb.config["channels"] == 3 and rgb.config["image_size"] == 32


def test_unknown_family_lists_both_generators() -> None:
    with pytest.raises(ValueError, match=r"unknown generator 'nope'; available: gan, vae"):
        get_family("nope")


def test_best_of_k_takes_each_targets_nearest_draw() -> None:
    """Of K draws per target, the error is the nearest one's; a draw equal to its target gives 0."""
    target, others = blobs(3, SIZE, seed=0), blobs(3, SIZE, seed=1)  # [3, 1, S, S]
    blank = torch.zeros_like(target)
    # Draw 0: blank for every target; draw 1: target 0 itself, then other drawings.
    drawn = torch.cat([blank, torch.cat([target[:1], others[1:]])])
    err = best_of_k(drawn, target[:, None], (1, 2))  # one target per exemplar: [B, M = 1, C, S, S]
    assert err.shape == (3,) and float(err[0]) == 0.0
    expected = torch.minimum(multiscale_errors(blank, target, (1, 2)), multiscale_errors(others, target, (1, 2)))
    assert torch.allclose(err[1:], expected[1:])


def test_best_of_k_teaches_only_the_best_draw() -> None:
    """The gradient reaches the nearest draw of each target and leaves the other draws free."""
    target = blobs(2, SIZE, seed=0)
    near = (target * 0.9).requires_grad_()
    far = torch.zeros_like(target).requires_grad_()
    best_of_k(torch.cat([far, near]), target[:, None], (1,)).sum().backward()
    assert far.grad is not None and near.grad is not None
    assert float(far.grad.abs().sum()) == 0.0 and float(near.grad.abs().sum()) > 0


def test_draw_target_errors_pair_every_draw_with_every_target() -> None:
    """[K, M, B]: entry (k, m, i) is draw k of exemplar i against target m of exemplar i."""
    k, m, b = 3, 2, 4
    drawn = blobs(k * b, SIZE, seed=0)
    targets = torch.stack([blobs(b, SIZE, seed=1), blobs(b, SIZE, seed=2)], dim=1)  # [B, M, C, S, S]
    errors = draw_target_errors(drawn, targets, (1, 2))
    assert errors.shape == (k, m, b)
    for kk, mm, i in [(0, 0, 0), (2, 1, 3), (1, 0, 2)]:
        expected = multiscale_errors(drawn[kk * b + i:kk * b + i + 1], targets[i:i + 1, mm], (1, 2))
        assert torch.allclose(errors[kk, mm, i], expected[0])


def test_best_of_k_over_several_targets() -> None:
    """Each target's nearest draw, averaged over the targets: copies of one target pay for the other."""
    t0, t1 = blobs(1, SIZE, seed=0), blobs(1, SIZE, seed=1)
    targets = torch.stack([t0, t1], dim=1)  # one exemplar, M = 2 real drawings: [1, 2, 1, S, S]
    blank = torch.zeros_like(t0)
    e = lambda x, y: float(multiscale_errors(x, y, (1,))[0])  # noqa: E731
    # Draws: t0 itself and a blank. t0 is matched exactly; t1's nearest draw is whichever is nearer.
    assert float(best_of_k(torch.cat([t0, blank]), targets, (1,))[0]) == pytest.approx(
        min(e(t0, t1), e(blank, t1)) / 2, rel=1e-5)
    assert float(best_of_k(torch.cat([t0, t0]), targets, (1,))[0]) == pytest.approx(e(t0, t1) / 2, rel=1e-5)
    assert float(best_of_k(torch.cat([t0, t1]), targets, (1,))[0]) == 0.0


# ---------------------------------------------------------------------------- config


def test_config_from_params_turns_lists_into_tuples() -> None:
    cfg = from_dict(GANConfig, {"widths": [8, 16, 32], "betas": [0, 0.99], "diversity_weight": 0},
                    "generator.gan")
    assert cfg.widths == (8, 16, 32) and cfg.betas == (0.0, 0.99) and cfg.diversity_weight == 0.0
    assert all(isinstance(b, float) for b in cfg.betas)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"widths": [12, 16]}, "generator.gan.widths"),
        ({"widths": [16]}, "generator.gan.widths"),
        ({"widths": [16, 0]}, "generator.gan.widths"),
        ({"diversity_weight": -0.5}, "generator.gan.diversity_weight"),
        ({"diversity_cap": 0}, "generator.gan.diversity_cap"),
        ({"betas": [0.5, 1.0]}, "generator.gan.betas"),
        ({"betas": [-0.1, 0.9]}, "generator.gan.betas"),
        ({"betas": [0.9]}, "generator.gan.betas"),
        ({"max_steps": 0}, "generator.gan.max_steps"),
        ({"critic_steps": 0}, "generator.gan.critic_steps"),
        ({"noise_dim": 0}, "generator.gan.noise_dim"),
        ({"flow_resolution": 0}, "generator.gan.flow_resolution"),
        ({"lr_critic": 0}, "generator.gan.lr_critic"),
        ({"max_displacement": -0.1}, "generator.gan.max_displacement"),
        ({"reconstruction_weight": -1}, "generator.gan.reconstruction_weight"),
        ({"reconstruction_samples": 1}, "generator.gan.reconstruction_samples"),
        ({"scales": []}, "generator.gan.scales"),
        ({"critic_blur": 0}, "generator.gan.critic_blur"),
        ({"real_targets": 0}, "generator.gan.real_targets"),
        ({"critic_blur": 2}, "generator.gan.critic_blur"),
        ({"scales": [0, 2]}, "generator.gan.scales"),
    ],
)
def test_config_rejects_bad_values(values: dict[str, object], key: str) -> None:
    with pytest.raises(ParamsError, match=f"`{key}`"):
        from_dict(GANConfig, values, "generator.gan")


def test_config_rejects_a_batch_too_small_for_noise_pairs() -> None:
    """Each batch pairs two noise vectors on half its exemplars: with one pair there is no half to train on.

    Library bug (pipeline/generators/gan.py, GANConfig.validate): batch_size=1 is accepted, and the
    first training step then fails deep inside affine_grid ("Expected non-zero, positive output size").
    """
    with pytest.raises(ParamsError, match=r"`generator\.gan\.batch_size`"):
        from_dict(GANConfig, {"batch_size": 1}, "generator.gan")


def test_shipped_params_build_the_generator() -> None:
    """params.yaml's `generator.gan` section must build at `data.image_size`, or train_generator@gan fails.

    Library bug (params.yaml `generator.gan.widths: [16, 32, 64]`): three U-Net levels need an image
    side divisible by 8, and `data.image_size` is 28 (GANConfig's default widths (16, 64) work).
    """
    params = load_params(PARAMS)
    cfg = section(params, GANConfig, "generator.gan")
    data = section(params, DataConfig, "data")
    model = build(cfg, data.image_size, data.channels)
    assert model.config["image_size"] == data.image_size and model.config["channels"] == data.channels


# ---------------------------------------------------------------------------- training


TRAIN_CFG = {"noise_dim": NOISE, "widths": list(WIDTHS), "critic_width": 8, "batch_size": 8}


def source_pairs(dataset: FewShotSet, batch_size: int, seed: int) -> SameClassPairs:
    source = dataset.indices("source")
    return SameClassPairs(dataset.images[source], dataset.labels[source], batch_size, seed)


def fit(dataset: FewShotSet, cfg: GANConfig, steps: int) -> tuple[GANModule, pl.Trainer]:
    pl.seed_everything(cfg.seed, verbose=False)
    module = GANModule(build(cfg, dataset.image_size, dataset.channels), cfg)
    # As the train_generator stage does: Lightning's max_steps counts the critic's steps as well.
    trainer = pl.Trainer(max_steps=steps * module.optimizer_steps_per_batch, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    loader = torch.utils.data.DataLoader(source_pairs(dataset, cfg.batch_size, cfg.seed), batch_size=None)
    trainer.fit(module, loader)  # an endless loader: only max_steps stops it
    return module, trainer


def optimizer_step_count(optimizer: torch.optim.Optimizer) -> int:
    return {int(state["step"]) for state in optimizer.state.values()}.pop()


@pytest.mark.parametrize("critic_steps", [1, 2])
def test_one_batch_per_generator_update(tiny_omniglot: tuple[FewShotSet, dict], critic_steps: int) -> None:
    """max_steps = steps x optimizer_steps_per_batch runs `steps` batches, and the lr decays to 0 at the last."""
    dataset, _ = tiny_omniglot
    steps = 3
    cfg = from_dict(GANConfig, {**TRAIN_CFG, "critic_steps": critic_steps, "max_steps": steps}, "generator.gan")
    module, trainer = fit(dataset, cfg, steps)
    assert module.optimizer_steps_per_batch == critic_steps + 1
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == steps
    assert trainer.global_step == steps * (critic_steps + 1)
    opt_g, opt_d = trainer.optimizers
    assert {id(p) for p in opt_g.param_groups[0]["params"]} == {id(p) for p in module.model.parameters()}
    assert optimizer_step_count(opt_g) == steps
    assert optimizer_step_count(opt_d) == steps * critic_steps
    assert opt_g.param_groups[0]["lr"] == 0.0 and opt_d.param_groups[0]["lr"] == 0.0
    logged = trainer.callback_metrics
    for key in ("train/loss_critic", "train/loss_generator", "train/spread", "train/critic_gap",
                "train/change_vs_pair_change", "train/best_of_k_vs_copy"):
        assert key in logged and torch.isfinite(logged[key]), key


def test_a_few_steps_lower_the_critic_loss(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    """On held-out real pairs vs the generator's drawings, the hinge loss falls below 2, a constant critic's.

    The generator starts as the identity warp, so its drawings are copies of the exemplar, and real
    pairs are never identical: a critic that learns anything learns to tell the two apart.
    """
    dataset, _ = tiny_omniglot
    steps = 40
    cfg = from_dict(GANConfig, {**TRAIN_CFG, "lr_critic": 4e-3, "lr_generator": 2e-4, "max_steps": steps},
                    "generator.gan")
    held_exemplar, held_targets = next(iter(source_pairs(dataset, 16, seed=99)))
    held_real = held_targets[:, 0]  # [B, C, S, S]
    held_noise = torch.randn(16, NOISE, generator=seeded(1))

    def held_critic_loss(module: GANModule) -> float:
        module.eval()
        with torch.no_grad():
            fake = module.model(held_exemplar, held_noise)
            d_real, d_fake = module.critic(held_exemplar, held_real), module.critic(held_exemplar, fake)
        return float(F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean())

    pl.seed_everything(cfg.seed, verbose=False)
    before = held_critic_loss(GANModule(build(cfg, 28), cfg))  # the same initial weights as fit() builds
    module, trainer = fit(dataset, cfg, steps)
    after = held_critic_loss(module)
    assert after < before
    assert after < 1.9, f"held-out hinge loss {after:.3f}: no better than a critic that always says 0"
    assert float(trainer.callback_metrics["train/loss_critic"]) < 2.0
    assert np.isfinite(after) and all(torch.isfinite(p).all() for p in module.parameters())


def test_a_few_steps_with_best_of_k_bring_draws_nearer_real_drawings(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    """With the reconstruction term, the best of K draws moves towards held-out real second drawings.

    At the start the generator is the identity warp: every draw is a copy of the exemplar (ratio 1
    to copying). A few steps pulling the best draw towards the real pair must beat copying.
    """
    dataset, _ = tiny_omniglot
    steps, k = 40, 4
    cfg = from_dict(GANConfig, {**TRAIN_CFG, "lr_generator": 3e-3, "max_steps": steps, "reconstruction_weight": 5.0,
                                "reconstruction_samples": k}, "generator.gan")
    held_exemplar, held_real = next(iter(source_pairs(dataset, 16, seed=99)))  # [B, C, S, S], [B, 1, C, S, S]
    held_noise = torch.randn(k * 16, NOISE, generator=seeded(1))

    def held_ratio(model: DAGANGenerator) -> float:
        model.eval()
        with torch.no_grad():
            drawn = model(held_exemplar.repeat(k, 1, 1, 1), held_noise)
        copy = multiscale_errors(held_exemplar, held_real[:, 0], cfg.scales).mean()
        return float(best_of_k(drawn, held_real, cfg.scales).mean() / copy)

    pl.seed_everything(cfg.seed, verbose=False)
    before = held_ratio(build(cfg, 28))
    module, _ = fit(dataset, cfg, steps)
    after = held_ratio(module.model)
    assert before == pytest.approx(1.0, abs=1e-4), "the untrained generator should copy the exemplar"
    assert after < 0.95 * before, f"best-of-{k} error vs copying: {before:.3f} -> {after:.3f}"


# ---------------------------------------------------------------------------- the networks follow the data


SIZES, CHANNELS = [28, 32, 48, 64, 84], [1, 3]


def colour_drawings(n: int, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Blob drawings [n, channels, size, size]; in RGB each channel is another drawing."""
    return torch.cat([blobs(n, size, seed + 10 * c) for c in range(channels)], dim=1)


def sized_generator(image_size: int, channels: int, seed: int = 0) -> DAGANGenerator:
    torch.manual_seed(seed)
    model = DAGANGenerator(image_size, noise_dim=NOISE, widths=WIDTHS, flow_resolution=FLOW, channels=channels)
    nn.init.normal_(model.to_flow.weight, std=0.3)
    nn.init.normal_(model.to_flow.bias, std=0.3)
    return model.eval()


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("image_size", SIZES)
def test_any_size_and_channels_generate_and_critic(image_size: int, channels: int) -> None:
    model = sized_generator(image_size, channels)
    x = colour_drawings(2, image_size, channels)
    with torch.no_grad():
        out, flow = model(x, noise(2, 0)), model.flow(x, noise(2, 0))
    assert out.shape == (2, channels, image_size, image_size) and torch.isfinite(out).all()
    assert flow.shape == (2, image_size, image_size, 2)
    drawn = model.generate(x, 3, generator=seeded(0))
    assert drawn.shape == (2, 3, channels, image_size, image_size)
    assert float(drawn.min()) >= 0 and float(drawn.max()) <= 1
    critic = PairCritic(image_size, width=8, blur=3, channels=channels).eval()
    with torch.no_grad():
        score = critic(x, out)
    assert score.shape == (2,) and torch.isfinite(score).all()


def test_the_warp_moves_every_channel_alike() -> None:
    """One displacement field per drawing: three equal channels stay equal after the warp."""
    grey = blobs(2, 32).expand(-1, 3, -1, -1)
    out = sized_generator(32, 3).generate(grey, 2, generator=seeded(0))
    assert torch.equal(out[:, :, 0], out[:, :, 1]) and torch.equal(out[:, :, 0], out[:, :, 2])


@pytest.mark.parametrize(("image_size", "channels"), [(32, 3), (84, 1)])
def test_losses_on_a_tiny_batch(image_size: int, channels: int) -> None:
    """The training step's losses on [B, C, S, S] exemplars and [B, M, C, S, S] targets: finite, with gradients."""
    b, m, k = 4, 2, 3
    model, critic = sized_generator(image_size, channels).train(), PairCritic(image_size, 8, 3, channels)
    exemplar = colour_drawings(b, image_size, channels, 0)
    targets = torch.stack([colour_drawings(b, image_size, channels, s) for s in (1, 2)], dim=1)
    fake = model(exemplar.repeat(k, 1, 1, 1), torch.randn(k * b, NOISE, generator=seeded(0)))
    errors = draw_target_errors(fake, targets, (1, 2))
    assert errors.shape == (k, m, b)
    loss = best_of_k(fake, targets, (1, 2)).mean() - critic(exemplar, fake[:b]).mean()
    assert torch.isfinite(loss)
    loss.backward()
    assert model.to_flow.weight.grad is not None and float(model.to_flow.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize(("image_size", "channels"), [(32, 3), (48, 1)])
def test_training_steps_on_a_tiny_batch(image_size: int, channels: int) -> None:
    """Two real GANModule steps (critic and generator) on batches as SameClassPairs gives them."""
    cfg = from_dict(GANConfig, {**TRAIN_CFG, "batch_size": 4, "real_targets": 2, "reconstruction_samples": 2,
                                "max_steps": 2}, "generator.gan")
    pl.seed_everything(0, verbose=False)
    module = GANModule(build(cfg, image_size, channels), cfg)
    assert module.critic.net[0].in_channels == 2 * channels
    exemplar = colour_drawings(4, image_size, channels, 0)
    targets = torch.stack([colour_drawings(4, image_size, channels, s) for s in (1, 2)], dim=1)
    trainer = pl.Trainer(max_steps=2 * module.optimizer_steps_per_batch, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    trainer.fit(module, torch.utils.data.DataLoader([(exemplar, targets)] * 2, batch_size=None))
    assert trainer.global_step == 2 * module.optimizer_steps_per_batch
    for key in ("train/loss_critic", "train/loss_generator", "train/best_of_k_vs_copy"):
        assert torch.isfinite(trainer.callback_metrics[key]), key


def test_rgb_checkpoint_round_trip(tmp_path: Path) -> None:
    model = sized_generator(32, 3, seed=4)
    save_generator("gan", model, tmp_path / FILENAME, extra={"steps": 1})
    loaded, extra = load_generator(tmp_path / FILENAME)
    assert isinstance(loaded, DAGANGenerator) and loaded.config == model.config and loaded.channels == 3
    assert extra == {"family": "gan", "steps": 1}
    x = colour_drawings(2, 32, 3)
    assert torch.equal(loaded.generate(x, 3, generator=seeded(1)), model.generate(x, 3, generator=seeded(1)))


@pytest.mark.parametrize("channels", CHANNELS)
def test_load_at_another_image_size(channels: int, tmp_path: Path) -> None:
    """Trained at 28, drawn at 32 (or 84): the same weights in a fully convolutional model of the new size."""
    model = sized_generator(28, channels)
    save_generator("gan", model, tmp_path / FILENAME)
    for size in (32, 84):
        bigger, extra = load_generator(tmp_path, image_size=size)
        assert isinstance(bigger, DAGANGenerator) and not bigger.training and extra["family"] == "gan"
        assert bigger.config == {**model.config, "image_size": size}
        for (name, p), q in zip(bigger.state_dict().items(), model.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
        out = bigger.generate(colour_drawings(2, size, channels), 4, generator=seeded(0))
        assert out.shape == (2, 4, channels, size, size)
    with pytest.raises(ValueError, match="image_size=30 must be divisible by 4"):
        load_generator(tmp_path, image_size=30)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "ddp_fork", "ddp_notebook",
                                      "ddp_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true"])
def test_every_ddp_launcher_is_told_the_gan_leaves_parameters_unused(strategy: str) -> None:
    """Whichever DDP launcher the params name, the GAN gets its variant that expects unused parameters, and
    Lightning knows the name; other strategies pass through."""
    from pytorch_lightning.strategies import StrategyRegistry

    told = expecting_unused_parameters(strategy)
    assert told.endswith("_find_unused_parameters_true") and told.startswith(strategy.split("_find")[0])
    assert told in StrategyRegistry.available_strategies()
    for other in ("auto", "single_device", "deepspeed"):
        assert expecting_unused_parameters(other) == other
