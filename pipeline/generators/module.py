"""How the generators are trained: one LightningModule per family (`MODULES`, keyed as the registry
`pipeline.generators.CONFIGS`), over same-class pairs of the source classes.

The networks (`vae`, `gan`) import no Lightning: drawing from a trained generator needs only them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from pipeline.generators.blocks import multiscale_error
from pipeline.generators.config import GANConfig, VAEConfig
from pipeline.generators.gan import DAGANGenerator, PairCritic, area_ratio, best_of_k
from pipeline.generators.vae import ExemplarVAE


class VAEModule(pl.LightningModule):
    """Trains `ExemplarVAE` on same-class pairs: reconstruction of x_b plus beta * KL(q || N(0, I))."""

    def __init__(self, model: ExemplarVAE, cfg: VAEConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.save_hyperparameters({"generator": {"vae": dataclasses.asdict(cfg)}, "model": model.config})

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        exemplar, targets = batch  # [B, C, S, S], [B, 1, C, S, S]
        target = targets[:, 0]
        recon, mean, logvar = self.model(exemplar, target)
        rec = multiscale_error(recon, target.float(), self.cfg.scales)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1).mean()
        loss = rec + self.cfg.beta * kl
        copy = multiscale_error(exemplar.float(), target.float(), self.cfg.scales)
        self.log_dict({"train/loss": loss, "train/reconstruction": rec, "train/kl": kl,
                       "train/reconstruction_vs_copy": rec / copy.clamp_min(1e-6)}, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.cfg.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.cfg.lr, total_steps=self.cfg.max_steps,
                                                    pct_start=0.05)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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


MODULES: dict[str, type[pl.LightningModule]] = {"vae": VAEModule, "gan": GANModule}
