"""The generators' params (`generator.vae`, `generator.gan`): plain Python, so that validating params.yaml
imports neither torch, diffusers nor Lightning."""

from __future__ import annotations

import dataclasses

from pipeline.config import _check, check_precision, positive


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 16
    widths: tuple[int, ...] = (16, 32, 64)  # encoder channels per resolution: S, S/2, S/4 (28, 14, 7)
    max_displacement: float = 0.35  # largest stroke shift, as a fraction of half the image side
    beta: float = 1.0  # weight of the KL term
    scales: tuple[int, ...] = (1, 2, 4)  # the reconstruction is compared at these pooling factors
    batch_size: int = 64
    lr: float = 1e-3
    max_steps: int = 3000
    seed: int = 0
    # Overrides of params `trainer` for this model: on CPU its GroupNorm and grid_sample run
    # fastest in fp32 with the default memory layout (benchmarks/precision.py).
    precision: str | None = "32-true"
    channels_last: bool | None = False

    def validate(self, key: str) -> None:
        positive(key, latent_dim=self.latent_dim, max_displacement=self.max_displacement, batch_size=self.batch_size,
                 lr=self.lr, max_steps=self.max_steps)
        _check(self.beta >= 0, f"{key}.beta", self.beta, "a number >= 0")
        if self.precision is not None:
            check_precision(self.precision, f"{key}.precision")
        _check(len(self.widths) >= 2 and all(w > 0 for w in self.widths), f"{key}.widths", self.widths,
               "at least two positive channel counts")
        _check(all(s >= 1 for s in self.scales) and len(self.scales) > 0, f"{key}.scales", self.scales,
               "a non-empty list of pooling factors >= 1")


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
