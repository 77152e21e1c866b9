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

The networks and losses' parts; the training procedure that alternates them is `module.GANModule`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.generators.blocks import identity_grid, multiscale_errors
from pipeline.generators.config import GANConfig


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


def build(cfg: GANConfig, image_size: int, channels: int = 1) -> DAGANGenerator:
    return DAGANGenerator(image_size, cfg.noise_dim, cfg.widths, cfg.max_displacement, cfg.flow_resolution, channels)
