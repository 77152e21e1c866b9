"""Exemplar-conditioned VAE that draws a character again, differently.

Given an exemplar x_a and another drawing x_b of the same class, the encoder infers a small
latent code z ~ q(z | x_a, x_b) of *how* x_b is drawn differently from x_a; the decoder turns
(x_a, z) into a smooth displacement field and resamples the exemplar's strokes along it.

Why a displacement field rather than free pixels: a pixel decoder that sees the exemplar either
copies it (posterior collapse: blurred copies, no diversity), or lets z carry the character's
identity, so that prior samples z ~ N(0, I) drift into other characters. Moving the exemplar's
own strokes keeps the identity by construction; z only has room for the drawer's variation
(proportions, slant, stroke placement), learned from real pairs of the source classes.

The network only; its training procedure is `module.VAEModule`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.generators.blocks import FiLMResnet, conv_encoder, identity_grid
from pipeline.generators.config import VAEConfig


class ExemplarVAE(nn.Module):
    """x_a [B, C, S, S] (+ x_b for the posterior) -> a new drawing of x_a's class [B, C, S, S], values 0..1."""

    def __init__(self, image_size: int = 28, latent_dim: int = 16, widths: tuple[int, ...] = (16, 32, 64),
                 max_displacement: float = 0.35, channels: int = 1):
        super().__init__()
        self.config = {"image_size": image_size, "latent_dim": latent_dim, "widths": tuple(widths),
                       "max_displacement": max_displacement, "channels": channels}
        down = 2 ** (len(widths) - 1)
        if image_size % down:
            raise ValueError(f"image_size={image_size} must be divisible by {down} for {len(widths)} encoder levels")
        self.image_size = image_size
        self.channels = channels
        self.latent_dim = latent_dim
        self.max_displacement = max_displacement
        self.posterior = conv_encoder(2 * channels, latent_dim, widths, double_z=True)  # sees exemplar and target
        self.context = conv_encoder(channels, widths[-1], widths, double_z=False)  # sees the exemplar only
        self.decoder = FiLMResnet(widths[-1], latent_dim, n_blocks=2)
        self.to_flow = nn.Conv2d(widths[-1], 2, 3, padding=1)
        nn.init.zeros_(self.to_flow.weight)  # start as the identity warp
        nn.init.zeros_(self.to_flow.bias)  # type: ignore[arg-type]

    def encode(self, exemplar: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> mean, log-variance of q(z | x_a, x_b), each [B, latent_dim]."""
        stats = self.posterior(torch.cat([exemplar, target], dim=1)).float().mean(dim=(2, 3))
        mean, logvar = stats.chunk(2, dim=1)
        return mean, logvar.clamp(-10, 10)

    def flow(self, exemplar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Displacement field [B, S, S, 2] in grid units (-1..1 spans the image)."""
        h = self.decoder(self.context(exemplar), z)
        coarse = self.to_flow(h).float()  # [B, 2, S/4, S/4]: smooth by construction
        dense = F.interpolate(coarse, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (torch.tanh(dense) * self.max_displacement).permute(0, 2, 3, 1)

    def decode(self, exemplar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        grid = identity_grid(len(exemplar), self.image_size, exemplar.device) + self.flow(exemplar, z)
        return F.grid_sample(exemplar.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, exemplar: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mean, logvar = self.encode(exemplar, target)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return self.decode(exemplar, z), mean, logvar

    @torch.no_grad()
    def generate(self, exemplars: torch.Tensor, n: int, generator: torch.Generator,
                 temperature: float = 1.0) -> torch.Tensor:
        """n new drawings per exemplar: [B, C, S, S] -> [B, n, C, S, S], z from the prior."""
        b = len(exemplars)
        z = torch.randn(b * n, self.latent_dim, generator=generator, device=exemplars.device) * temperature
        repeated = exemplars.repeat_interleave(n, dim=0)
        return self.decode(repeated, z).view(b, n, self.channels, self.image_size, self.image_size)


def build(cfg: VAEConfig, image_size: int, channels: int = 1) -> ExemplarVAE:
    return ExemplarVAE(image_size, cfg.latent_dim, cfg.widths, cfg.max_displacement, channels)
