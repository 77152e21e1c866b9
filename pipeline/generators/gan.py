"""DAGAN-style GAN (Antoniou, Storkey & Edwards 2017): an exemplar and noise in, a new drawing of its class out.

Generator: a small U-Net of diffusers' ResNet blocks (encoder down to a 7 x 7 bottleneck, decoder
with a skip connection) whose bottleneck and decoder blocks are scaled and shifted by an embedding
of the noise vector: the noise is joined at the bottleneck, as in DAGAN. Critic: judges *pairs*, (exemplar,
another real drawing of its class) against (exemplar, generated drawing), with spectral norm and
the hinge loss; Lightning's manual optimization alternates the two.

What the generator outputs, and why: like the VAE, a smooth displacement field that moves the
exemplar's own strokes, not free pixels. A pixel decoder that sees the exemplar learns to copy it
(faint, identical copies, noise ignored) long before it learns to redraw it, and on 2 CPU cores it
never gets further. Moving strokes keeps the identity by construction, so adversarial training
only has to learn *how* drawers differ. Noise that the generator ignores is caught twice: the
critic sees exact copies as fake (real pairs are never identical), and a mode-seeking term
(Mao et al. 2019) rewards two noise vectors for giving two different drawings.

The critic alone teaches plausible drawings, not the *range* of ways people draw a character:
each batch also draws every exemplar K times beside M real drawings of its class by other
drawers, and each real drawing pulls the draw nearest to it (best of K, implicit maximum
likelihood: Li & Malik 2018). The other draws get no pull from it, so the noise comes to cover
the drawers' variation instead of averaging it.

The critic sees both drawings of a pair box-blurred (`critic_blur`): a warp resamples the
exemplar and so softens its strokes, a tell that a critic of sharp pairs learns at once; chasing
it, the generator shrank the characters (a quarter less ink than their exemplars). Blurred, the
critic judges shapes, and the drawings keep their size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.config import _check, check_precision, positive
from pipeline.generators.blocks import identity_grid, multiscale_errors


@dataclasses.dataclass(frozen=True)
class GANConfig:
    noise_dim: int = 32
    widths: tuple[int, ...] = (16, 64)  # U-Net channels per level: 14, 7 (after a strided input convolution)
    critic_width: int = 32
    max_displacement: float = 0.35  # largest stroke shift, as a fraction of half the image side
    flow_resolution: int = 7  # the displacement field is made at this resolution, then smoothly upsampled
    diversity_weight: float = 5.0  # weight of the mode-seeking term
    diversity_cap: float = 0.05  # it stops paying once two fields' shapes differ by this much per unit noise
    fold_weight: float = 0.0  # penalty on fields that fold or crush strokes (local area ratio below fold_floor)
    fold_floor: float = 0.3
    # Best-of-K reconstruction (implicit maximum likelihood): of K noise draws for an exemplar, the
    # one nearest to a real other drawing of its class is pulled towards it; 0 = adversarial only.
    reconstruction_weight: float = 5.0
    reconstruction_samples: int = 4  # K noise draws per exemplar (>= 2: two of them also feed mode seeking)
    real_targets: int = 4  # M other real drawings of the exemplar's class per exemplar
    scales: tuple[int, ...] = (1, 2, 4)  # pooling factors of the reconstruction error (as the VAE's)
    critic_blur: int = 5  # the critic sees both drawings box-blurred over this many pixels (1 = as they are)
    critic_steps: int = 1  # critic updates per generator update
    batch_size: int = 64
    lr_generator: float = 2e-4
    lr_critic: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)
    max_steps: int = 2000  # generator updates
    seed: int = 0
    precision: str | None = "auto"  # overrides of params `trainer` (benchmarks/precision.py)
    channels_last: bool | None = False

    def validate(self, key: str) -> None:
        positive(key, noise_dim=self.noise_dim, critic_width=self.critic_width,
                 max_displacement=self.max_displacement, flow_resolution=self.flow_resolution,
                 critic_steps=self.critic_steps, batch_size=self.batch_size, lr_generator=self.lr_generator,
                 lr_critic=self.lr_critic, max_steps=self.max_steps)
        if self.precision is not None:
            check_precision(self.precision, f"{key}.precision")
        _check(len(self.widths) >= 2 and all(w > 0 and w % 8 == 0 for w in self.widths), f"{key}.widths",
               self.widths, "at least two channel counts, each a positive multiple of 8 (GroupNorm groups)")
        _check(self.batch_size >= 2, f"{key}.batch_size", self.batch_size,
               "at least 2 (half the batch is drawn twice, with two noise vectors)")
        _check(self.diversity_weight >= 0, f"{key}.diversity_weight", self.diversity_weight, "a number >= 0")
        _check(self.fold_weight >= 0, f"{key}.fold_weight", self.fold_weight, "a number >= 0")
        _check(0 <= self.fold_floor < 1, f"{key}.fold_floor", self.fold_floor, "a number in [0, 1)")
        _check(self.reconstruction_weight >= 0, f"{key}.reconstruction_weight", self.reconstruction_weight,
               "a number >= 0")
        _check(self.reconstruction_samples >= 2, f"{key}.reconstruction_samples", self.reconstruction_samples,
               "at least 2 (two noise draws per exemplar also feed the mode-seeking term)")
        _check(self.critic_blur >= 1 and self.critic_blur % 2 == 1, f"{key}.critic_blur", self.critic_blur,
               "an odd box size >= 1 (1 = no blur)")
        _check(self.real_targets >= 1, f"{key}.real_targets", self.real_targets, "a count >= 1")
        _check(all(s >= 1 for s in self.scales) and len(self.scales) > 0, f"{key}.scales", self.scales,
               "a non-empty list of pooling factors >= 1")
        _check(self.diversity_cap > 0, f"{key}.diversity_cap", self.diversity_cap, "a number > 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{key}.betas", self.betas,
               "two Adam betas in [0, 1)")


class DAGANGenerator(nn.Module):
    """exemplar [B, C, S, S] in 0..1, noise [B, noise_dim] -> new drawing [B, C, S, S] in 0..1.

    A strided convolution takes the exemplar to S/2; encoder levels of diffusers ResNet blocks
    follow, down-sampling 2x between levels (widths (16, 64): 14 -> 7). The bottleneck block is
    scaled and shifted by the noise embedding; the decoder goes back up one level, joined there by
    the encoder's skip features (and the noise again), and makes the coarse displacement field.
    Small on purpose: it must train in minutes on two CPU cores (params `generator.gan`).
    """

    def __init__(self, image_size: int = 28, noise_dim: int = 32, widths: tuple[int, ...] = (16, 64),
                 max_displacement: float = 0.35, flow_resolution: int = 7, channels: int = 1):
        super().__init__()
        self.config = {"image_size": image_size, "noise_dim": noise_dim, "widths": tuple(widths),
                       "max_displacement": max_displacement, "flow_resolution": flow_resolution, "channels": channels}
        down = 2 ** len(widths)
        if image_size % down:
            raise ValueError(f"image_size={image_size} must be divisible by {down} for {len(widths)} U-Net levels")
        if flow_resolution > image_size:
            raise ValueError(f"flow_resolution={flow_resolution} must be at most image_size={image_size}")
        self.image_size = image_size
        self.channels = channels
        self.noise_dim = noise_dim
        self.max_displacement = max_displacement
        self.flow_resolution = flow_resolution
        emb = 4 * widths[-1]
        self.noise_embedding = nn.Sequential(nn.Linear(noise_dim, emb), nn.SiLU(), nn.Linear(emb, emb))

        def block(c_in: int, c_out: int, temb: int | None = None) -> ResnetBlock2D:
            return ResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=temb,  # type: ignore[arg-type]
                                 groups=min(8, c_in),
                                 groups_out=min(8, c_out), time_embedding_norm="scale_shift" if temb else "default")

        self.conv_in = nn.Conv2d(channels, widths[0], 4, stride=2, padding=1)  # S -> S/2
        self.encoder = nn.ModuleList(block(c_in, c_out)
                                     for c_in, c_out in zip((widths[0], *widths[:-1]), widths, strict=True))
        self.downsample = nn.ModuleList(Downsample2D(w, use_conv=True, padding=1) for w in widths[:-1])
        self.bottleneck = block(widths[-1], widths[-1], emb)
        self.upsample = Upsample2D(widths[-1], use_conv=False)
        self.decoder = block(widths[-1] + widths[-2], widths[-2], emb)
        self.to_flow = nn.Conv2d(widths[-2], 2, 3, padding=1)
        # Start as the identity warp: the first drawings are copies, which the critic calls fake.
        nn.init.zeros_(self.to_flow.weight)
        nn.init.zeros_(self.to_flow.bias)  # type: ignore[arg-type]

    def flow(self, exemplar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Displacement field [B, S, S, 2] in grid units (-1..1 spans the image)."""
        cond = self.noise_embedding(noise)
        h = self.conv_in(exemplar * 2 - 1)
        skips = []
        for k, block in enumerate(self.encoder):
            h = block(h, None)
            if k < len(self.downsample):
                skips.append(h)
                h = self.downsample[k](h)
        h = self.bottleneck(h, cond)  # the noise joins at the bottleneck
        h = self.decoder(torch.cat([self.upsample(h), skips[-1]], dim=1), cond)
        coarse = F.adaptive_avg_pool2d(self.to_flow(h).float(), self.flow_resolution)  # smooth: few degrees of freedom
        dense = F.interpolate(coarse, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (torch.tanh(dense) * self.max_displacement).permute(0, 2, 3, 1)

    def warp(self, exemplar: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Resample the exemplar's strokes along a displacement field [B, S, S, 2]."""
        grid = identity_grid(len(exemplar), self.image_size, exemplar.device) + flow
        return F.grid_sample(exemplar.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, exemplar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.warp(exemplar, self.flow(exemplar, noise))

    @torch.no_grad()
    def generate(self, exemplars: torch.Tensor, n: int, generator: torch.Generator,
                 temperature: float = 1.0) -> torch.Tensor:
        """n new drawings per exemplar: [B, C, S, S] -> [B, n, C, S, S]; noise ~ N(0, temperature^2 I)."""
        b = len(exemplars)
        noise = torch.randn(b * n, self.noise_dim, generator=generator, device=exemplars.device) * temperature
        drawn = self(exemplars.repeat_interleave(n, dim=0), noise)
        return drawn.view(b, n, self.channels, self.image_size, self.image_size)


def area_ratio(flow: torch.Tensor) -> torch.Tensor:
    """Local area ratio (Jacobian determinant) of x -> x + flow(x), by finite differences: [B, S-1, S-1].

    flow: [B, S, S, 2] in grid units (x, y). 1 = no change, < 1 compresses, <= 0 folds strokes over
    each other, which a warp of real drawings never does.
    """
    step = 2.0 / flow.shape[1]  # grid units per pixel
    dx = (flow[:, :-1, 1:] - flow[:, :-1, :-1]) / step  # d(flow)/dx: [B, S-1, S-1, 2]
    dy = (flow[:, 1:, :-1] - flow[:, :-1, :-1]) / step
    return (1 + dx[..., 0]) * (1 + dy[..., 1]) - dx[..., 1] * dy[..., 0]


def draw_target_errors(drawn: torch.Tensor, targets: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """Multiscale error of every draw against every target of its exemplar: [K, M, B].

    drawn: [K * B, C, S, S], draw k of exemplar i at row k * B + i; targets: [B, M, C, S, S], M real
    drawings of exemplar i's class.
    """
    k, m = len(drawn) // len(targets), targets.shape[1]
    return torch.stack([multiscale_errors(drawn, targets[:, j].repeat(k, 1, 1, 1), scales).view(k, -1)
                        for j in range(m)], dim=1)


def best_of_k(drawn: torch.Tensor, targets: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """Per exemplar, each target's smallest error among its K draws, averaged over the targets: [B].

    drawn: [K * B, C, S, S] (draw k of exemplar i at row k * B + i); targets: [B, M, C, S, S]. Only a
    target's nearest draw gets a gradient, so the others stay free to be other ways of drawing it.
    """
    return draw_target_errors(drawn, targets, scales).min(dim=0).values.mean(dim=0)


class PairCritic(nn.Module):
    """(exemplar, drawing) pair [B, 2C, S, S] -> realness score [B]; spectrally normalised convolutions."""

    def __init__(self, image_size: int = 28, width: int = 32, blur: int = 1, channels: int = 1):
        super().__init__()
        w = width
        self.blur = blur
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(2 * channels, w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # S/2
            spectral_norm(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # S/4
            spectral_norm(nn.Conv2d(2 * w, 4 * w, 3, padding=1)), nn.LeakyReLU(0.2),
        )
        self.head = spectral_norm(nn.Linear(4 * w, 1))

    def forward(self, exemplar: torch.Tensor, drawing: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([exemplar, drawing], dim=1)
        if self.blur > 1:  # judge shapes, not how the strokes were rendered (a warp resamples, and blurs)
            pair = F.avg_pool2d(pair, self.blur, stride=1, padding=self.blur // 2, count_include_pad=False)
        h = self.net(pair * 2 - 1)
        return self.head(h.sum(dim=(2, 3))).squeeze(1)  # global sum pooling, as in SN-GAN


class GANModule(pl.LightningModule):
    """Hinge-loss GAN on same-class pairs of the source classes, with manual optimization.

    Per batch: `critic_steps` critic updates on (exemplar, real) vs (exemplar, G(exemplar, z)), then
    one generator update: fool the critic, and make two noise vectors give two different drawings.
    """

    def __init__(self, model: DAGANGenerator, cfg: GANConfig):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.critic = PairCritic(model.image_size, cfg.critic_width, cfg.critic_blur, model.channels)
        self.cfg = cfg
        self.save_hyperparameters({"generator": {"gan": dataclasses.asdict(cfg)}, "model": model.config})

    @property
    def optimizer_steps_per_batch(self) -> int:
        """Lightning counts every optimizer step in `max_steps`: the critic's and the generator's."""
        return self.cfg.critic_steps + 1

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        pair_exemplar, others = batch  # [B, C, S, S], [B, M, C, S, S]
        real = others[:, 0]  # the critic's real pair; all M others are the reconstruction's targets
        opt_g, opt_d = self.optimizers()  # type: ignore[misc,attr-defined]
        cfg = self.cfg
        # K noise draws for each of half the exemplars (sample k of exemplar i at k * half + i). The
        # first two must differ (mode seeking) and are what the critic judges (the K draws are alike
        # in distribution: two per exemplar suffice, and save the critic's time); each real drawing
        # pulls its nearest of the K. One generator pass per batch: the critic learns on its
        # output detached, then the generator learns through the updated critic.
        half, k = len(pair_exemplar) // 2, cfg.reconstruction_samples
        exemplar = pair_exemplar[:half].repeat(k, 1, 1, 1)
        z = torch.randn(k * half, cfg.noise_dim, device=exemplar.device)
        flow = self.model.flow(exemplar, z)
        fake = self.model.warp(exemplar, flow)
        judged = 2 * half

        for _ in range(cfg.critic_steps):
            d_real, d_fake = self.critic(pair_exemplar, real), self.critic(exemplar[:judged], fake[:judged].detach())
            loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()

        loss_adv = -self.critic(exemplar[:judged], fake[:judged]).mean()
        # Mode seeking on the *shape* of the two fields: their difference less its mean shift, since
        # moving the whole drawing is the cheapest way to differ and the classic transforms do it already.
        d, dz = flow[:half] - flow[half:2 * half], z[:half] - z[half:2 * half]
        spread = (d - d.mean(dim=(1, 2), keepdim=True)).abs().mean(dim=(1, 2, 3)) / dz.abs().mean(1)
        loss_div = -spread.clamp(max=cfg.diversity_cap).mean()
        loss_fold = F.relu(cfg.fold_floor - area_ratio(flow.float())).mean()
        # Best of K: only the draw nearest a real drawing learns from it, so the noise keeps covering
        # the other ways of drawing the character (Li & Malik 2018), relative to copying the exemplar.
        targets = others[:half].float()
        copy = best_of_k(pair_exemplar[:half].float(), targets, cfg.scales).mean().clamp_min(1e-6)
        loss_rec = best_of_k(fake, targets, cfg.scales).mean() / copy
        loss_g = loss_adv + cfg.diversity_weight * loss_div + cfg.fold_weight * loss_fold
        if cfg.reconstruction_weight > 0:
            loss_g = loss_g + cfg.reconstruction_weight * loss_rec
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        for sched in self.lr_schedulers():  # type: ignore[union-attr]
            sched.step()

        self.log_dict({"train/loss_critic": loss_d, "train/loss_generator": loss_adv, "train/spread": spread.mean(),
                       "train/fold": loss_fold, "train/best_of_k_vs_copy": loss_rec,
                       "train/critic_gap": d_real.mean() - d_fake.mean(),
                       "train/change_vs_pair_change": (fake[:half] - exemplar[:half]).abs().mean()
                       / (pair_exemplar[:half] - real[:half]).abs().mean().clamp_min(1e-6)},
                      prog_bar=True)

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        opt_g = torch.optim.Adam(self.model.parameters(), lr=cfg.lr_generator, betas=cfg.betas)
        opt_d = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic, betas=cfg.betas)
        # Linear decay to zero over the run: a calmer end than a constant rate for the samples kept.
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: max(0.0, 1 - s / cfg.max_steps))
                  for o in (opt_g, opt_d)]
        return [opt_g, opt_d], scheds


def build(cfg: GANConfig, image_size: int, channels: int = 1) -> DAGANGenerator:
    return DAGANGenerator(image_size, cfg.noise_dim, cfg.widths, cfg.max_displacement, cfg.flow_resolution, channels)
