"""How the Siamese network is trained: pair, triplet or prototypical losses over P classes x 2 images, AdamW,
one cycle.

- `contrastive`, `bce`, `triplet`: each drawing against its twin and one negative (the most alike
  other class with `mining: hard`);
- `proto`: each drawing against all P classes of the batch at once, a softmax over its cosine
  similarities to their other drawings (divided by `temperature`): the prototypical loss of Snell
  et al. (2017) with one support drawing per class, taken both ways (first -> second, second -> first).
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.classifiers.config import SiameseConfig
from pipeline.classifiers.fewshot import episode_scores_accuracy
from pipeline.classifiers.network import SiameseNet
from pipeline.data.batches import distributed_place
from pipeline.data.episodes import Episodes


def pick_negatives(sim: torch.Tensor, mining: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row i of a [P, P] similarity matrix (diagonal = positives), a column j != i."""
    p = sim.shape[0]
    if mining == "hard":
        # The hardest negative among the similarities rounded to bf16 (8-bit mantissa: steps of 2^-9 to 2^-8 for
        # cosines of 0.25-1), near-ties going to the first in the batch's random class order. This is what bf16
        # autocast computes, and it trains better than the exact fp32 argmax, which on classes of several drawings
        # picks the one most confusable drawing every time: the smoke profile's oracle in fp32 scored 0.443 (20-way)
        # mining exactly and 0.588 mining so, where its bf16 reference is 0.599. The same on every machine.
        masked = sim.detach().to(torch.bfloat16, copy=True)
        masked.fill_diagonal_(float("-inf"))
        return masked.argmax(dim=1)
    offset = torch.randint(1, p, (p,), generator=generator, device=sim.device)
    return (torch.arange(p, device=sim.device) + offset) % p


class SiameseModule(pl.LightningModule):
    """Trains a `SiameseNet` on batches of P classes x 2 drawings."""

    def __init__(self, net: SiameseNet, cfg: SiameseConfig, val_data: dict[str, Any] | None = None,
                 batch_transform: Any = None):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.val_data = val_data  # {"images": [N, C, S, S] tensor, "episodes": Episodes}
        self.batch_transform = batch_transform  # a `BatchAffine` for training batches, or None
        self.save_hyperparameters({"siamese": dataclasses.asdict(cfg), "net": net.config})
        self.triplet = nn.TripletMarginLoss(margin=cfg.margin)
        self.cosine = nn.CosineEmbeddingLoss(margin=cfg.margin)
        self.bce = nn.BCEWithLogitsLoss()

    def on_train_start(self) -> None:
        if self.batch_transform is not None:
            self.batch_transform.reset(self.global_rank)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The classic transforms of the tensor engine, on the whole training batch at once, on its device."""
        if self.batch_transform is None or not self.trainer.training:
            return batch
        x1, x2 = batch
        return self.batch_transform.batch(x1), self.batch_transform.batch(x2)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x1, x2 = batch  # [P, C, S, S] each; row i of both is class i
        e1, e2 = self.net.embed(x1), self.net.embed(x2)
        if distributed_place()[1] > 1:
            # Each of W processes embedded its P classes of one global batch (`PairBatches`): the loss is scored
            # over all W x P, the others' classes as negatives, as a single process would. The gathered copies
            # carry their gradients back (summed over the W losses, which DDP's average then divides by W).
            e1, e2 = (cast(torch.Tensor, self.all_gather(e, sync_grads=True)).flatten(0, 1) for e in (e1, e2))
        sim = self.net.similarity(e1, e2)  # [P, P]; under DDP P is the whole global batch's classes
        # Mined for every loss: the proto loss does not use it, but the logged gap below is then the same
        # quantity whatever the loss, so learning curves compare across losses.
        neg = pick_negatives(sim, self.cfg.mining)
        p = len(neg)
        if self.cfg.loss == "proto":
            logits = sim.float() / self.cfg.temperature
            target = torch.arange(p, device=logits.device)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        elif self.cfg.loss == "triplet":
            loss = self.triplet(e1.float(), e2.float(), e2[neg].float())
        elif self.cfg.loss == "contrastive":
            a = torch.cat([e1, e1]).float()
            b = torch.cat([e2, e2[neg]]).float()
            y = torch.cat([torch.ones(p), -torch.ones(p)]).to(a.device)
            loss = self.cosine(a, b, y)
        else:
            idx = torch.arange(p, device=sim.device)
            logits = torch.cat([sim[idx, idx], sim[idx, neg]])
            y = torch.cat([torch.ones(p), torch.zeros(p)]).to(logits.device)
            loss = self.bce(logits, y)
        pos_sim = sim.diagonal().float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/pos_minus_neg", pos_sim - sim[torch.arange(p), neg].float().mean())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.val_data is None:
            return
        images = self.val_data["images"].to(self.device)
        episodes: Episodes = self.val_data["episodes"]
        acc = episode_scores_accuracy(self.net, images, episodes)
        self.log("val/acc_20way_seen", float(acc.mean()), prog_bar=True, batch_size=1, sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.cfg.lr, total_steps=self.cfg.max_steps,
                                                    pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
