"""Siamese network: a twin CNN with shared weights, scored by the likeness of two embeddings.

- `SiameseNet`: the architecture (embedding CNN, and the Koch et al. head for the BCE loss).
- `SiameseModule`: how it is trained (pair or triplet losses, optimizer), a LightningModule.
- `PairBatches`: the training batches, P classes x 2 drawings, augmented on the fly.
- `SiameseClassifier`: the few-shot API: take a support set, then score queries.
- `calibrate_verification`: the same-class threshold for verifying pairs, measured on held-out pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import _check, positive
from pipeline.data import to_tensor
from pipeline.episodes import Episodes, episode_accuracy
from pipeline.verification import TARGET_PATTERN, TARGETS, Calibration, Pairs, calibrate_threshold

LOSSES = ("contrastive", "bce", "triplet")


@dataclasses.dataclass(frozen=True)
class SiameseConfig:
    loss: Literal["contrastive", "bce", "triplet"] = "contrastive"
    channels: int = 64  # conv channels of each of the four blocks
    embedding_dim: int = 128
    margin: float = 0.5  # contrastive: cosine margin for negatives; triplet: distance margin
    mining: Literal["random", "hard"] = "hard"  # each anchor's negative: a random or the most alike other class
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_classes: int = 64  # P classes per batch, two drawings each
    max_steps: int = 2000
    val_every: int = 250  # steps between validations (seen-class episodes)
    seed: int = 0
    verify_target: str = "eer"  # what the saved verification threshold meets: `eer` or `far@X`
    verify_pairs: int = 2000  # same-class and as many different-class pairs of source classes to calibrate it on

    def validate(self, key: str) -> None:
        _check(self.loss in LOSSES, f"{key}.loss", self.loss, "one of " + ", ".join(LOSSES))
        _check(TARGET_PATTERN.fullmatch(self.verify_target) is not None, f"{key}.verify_target", self.verify_target,
               TARGETS)
        positive(key, channels=self.channels, embedding_dim=self.embedding_dim, lr=self.lr,
                 max_steps=self.max_steps, val_every=self.val_every, verify_pairs=self.verify_pairs)
        _check(self.batch_classes >= 2, f"{key}.batch_classes", self.batch_classes, "at least 2")
        _check(self.margin >= 0, f"{key}.margin", self.margin, "a number >= 0")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", self.weight_decay, "a number >= 0")


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class SiameseNet(nn.Module):
    """Embedding CNN shared by both twins. Input [B, 1, S, S] in 0..1 -> embedding [B, D]."""

    def __init__(self, image_size: int, channels: int = 64, embedding_dim: int = 128, loss: str = "contrastive"):
        super().__init__()
        self.config: dict[str, Any] = {"image_size": image_size, "channels": channels, "embedding_dim": embedding_dim,
                                       "loss": loss}
        self.loss = loss
        # Four conv blocks halve the side each time: 28 -> 14 -> 7 -> 3 -> 1.
        self.features = nn.Sequential(conv_block(1, channels), conv_block(channels, channels),
                                      conv_block(channels, channels), conv_block(channels, channels))
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for four 2x down-samplings; use at least 16")
        self.project = nn.Linear(channels * side * side, embedding_dim)
        # Koch et al. (2015): a weighted L1 distance between the twins' embeddings, then a sigmoid.
        self.head = nn.Linear(embedding_dim, 1) if loss == "bce" else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] -> [B, D]; L2-normalised for the metric losses."""
        e = self.project(self.features(x).flatten(1))
        return e if self.head is not None else F.normalize(e.float(), dim=-1)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """All-pairs likeness of embeddings a [A, D] and b [B, D] -> [A, B], higher = same class."""
        if self.head is not None:
            return self.head((a[:, None, :] - b[None, :, :]).abs().float()).squeeze(-1)
        return a.float() @ b.float().T  # cosine similarity of unit vectors

    def pair_similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Likeness of row-aligned embeddings a [B, D] and b [B, D] -> [B]: the diagonal of `similarity`."""
        if self.head is not None:
            return self.head((a - b).abs().float()).squeeze(-1)
        return (a.float() * b.float()).sum(-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Pairwise likeness of two image batches [B, 1, S, S] -> [B]."""
        return self.pair_similarity(self.embed(a), self.embed(b))


def pick_negatives(sim: torch.Tensor, mining: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row i of a [P, P] similarity matrix (diagonal = positives), a column j != i."""
    p = sim.shape[0]
    if mining == "hard":
        masked = sim.detach().clone()
        masked.fill_diagonal_(float("-inf"))
        return masked.argmax(dim=1)
    offset = torch.randint(1, p, (p,), generator=generator, device=sim.device)
    return (torch.arange(p, device=sim.device) + offset) % p


class SiameseModule(pl.LightningModule):
    """Trains a `SiameseNet` on batches of P classes x 2 drawings."""

    def __init__(self, net: SiameseNet, cfg: SiameseConfig, val_data: dict[str, Any] | None = None):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.val_data = val_data  # {"images": [N,1,S,S] tensor, "episodes": Episodes}
        self.save_hyperparameters({"siamese": dataclasses.asdict(cfg), "net": net.config})
        self.triplet = nn.TripletMarginLoss(margin=cfg.margin)
        self.cosine = nn.CosineEmbeddingLoss(margin=cfg.margin)
        self.bce = nn.BCEWithLogitsLoss()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x1, x2 = batch  # [P, 1, S, S] each; row i of both is class i
        e1, e2 = self.net.embed(x1), self.net.embed(x2)
        sim = self.net.similarity(e1, e2)  # [P, P]
        neg = pick_negatives(sim, self.cfg.mining)
        p = len(neg)
        if self.cfg.loss == "triplet":
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
        self.log("val/acc_20way_seen", float(acc.mean()), prog_bar=True, batch_size=1)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.cfg.lr, total_steps=self.cfg.max_steps,
                                                    pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def embed_all(net: SiameseNet, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Embed [N, 1, S, S] images in batches -> [N, D], under bf16 autocast (fast on AMX CPUs and GPUs).

    The network is switched to channels_last (its weights' layout only, in place): bf16 convolutions
    and max pooling run about 1.8x faster in it on CPU (embedding 8,192 drawings: 1.3 s vs 2.3 s).
    """
    net.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type in ("cpu", "cuda")):
            out.append(net.embed(x).float())
    return torch.cat(out)


@torch.no_grad()
def episode_scores(net: SiameseNet, embeddings: torch.Tensor, episodes: Episodes) -> np.ndarray:
    """Scores [E, N queries, N classes] for episodes indexing rows of `embeddings` [M, D]."""
    out = np.empty((len(episodes), episodes.n_way, episodes.n_way), dtype=np.float32)
    for e in range(len(episodes)):
        q = embeddings[torch.from_numpy(episodes.query[e])]
        s = embeddings[torch.from_numpy(episodes.support[e])]
        out[e] = net.similarity(q, s).float().cpu().numpy()
    return out


def episode_scores_accuracy(net: SiameseNet, images: torch.Tensor, episodes: Episodes) -> np.ndarray:
    """Per-episode accuracy [E] of `net` on episodes indexing `images` [M, 1, S, S]."""
    was_training = net.training
    acc = episode_accuracy(episode_scores(net, embed_all(net, images), episodes))
    net.train(was_training)
    return acc


class PairBatches(torch.utils.data.IterableDataset):
    """Endless batches of P classes x 2 drawings: (x1 [P,1,S,S], x2 [P,1,S,S]), row i = class i.

    `pools[c]` holds the images available for class c (the real exemplar, synthetic drawings,
    or all real drawings). The two drawings of a class are distinct when the pool has more than
    one; each then goes through `transform` (an albumentations pipeline) when one is given.
    """

    def __init__(self, pools: list[np.ndarray], batch_classes: int, seed: int,
                 transform: Callable[..., dict[str, np.ndarray]] | None = None):
        super().__init__()
        if batch_classes > len(pools):
            raise ValueError(
                f"siamese.batch_classes={batch_classes} is larger than the {len(pools)} training classes; "
                f"lower it to at most {len(pools)}"
            )
        if any(len(p) == 0 for p in pools):
            raise ValueError("a training class has no images")
        self.pools = pools
        self.batch_classes = batch_classes
        self.seed = seed
        self.transform = transform

    def _augment(self, image: np.ndarray) -> np.ndarray:
        return image if self.transform is None else self.transform(image=image)["image"]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, worker])
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(self.seed * 1000 + worker)
        n = len(self.pools)
        while True:
            classes = rng.choice(n, size=self.batch_classes, replace=False)
            first, second = [], []
            for c in classes:
                pool = self.pools[c]
                i, j = rng.choice(len(pool), size=2, replace=False) if len(pool) > 1 else (0, 0)
                first.append(self._augment(pool[i]))
                second.append(self._augment(pool[j]))
            yield to_tensor(np.stack(first)), to_tensor(np.stack(second))


def class_prototypes(net: SiameseNet, embeddings: torch.Tensor, labels: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """One prototype per class: the mean of its embeddings [S, D], re-normalised for the metric losses.

    labels [S] -> (classes [C] sorted, prototypes [C, D]) with row c the prototype of classes[c].
    """
    classes = np.unique(labels)
    protos = torch.stack([embeddings[torch.from_numpy(labels == c)].mean(0) for c in classes])
    if net.head is None:
        protos = F.normalize(protos, dim=-1)
    return classes, protos


class SiameseClassifier:
    """Few-shot classifier: `process_support` once, then score queries against it."""

    def __init__(self, net: SiameseNet):
        self.net = net.eval()
        self.support_embeddings: torch.Tensor | None = None
        self.support_labels: np.ndarray | None = None

    def process_support(self, images: torch.Tensor, labels: np.ndarray) -> None:
        """images [S, 1, H, W] in 0..1, labels [S]. Several drawings of a class are averaged."""
        self.process_support_embeddings(embed_all(self.net, images), labels)

    def process_support_embeddings(self, embeddings: torch.Tensor, labels: np.ndarray) -> None:
        """The same from support embeddings [S, D] already made by `embed_all` (e.g. an enrolled bank)."""
        self.support_labels, self.support_embeddings = class_prototypes(self.net, embeddings, labels)

    @torch.no_grad()
    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """queries [Q, 1, H, W] -> scores [Q, n_classes], column order = `support_labels`."""
        if self.support_embeddings is None:
            raise RuntimeError("call process_support(...) before scoring queries")
        return self.net.similarity(embed_all(self.net, queries), self.support_embeddings)

    def predict(self, queries: torch.Tensor) -> np.ndarray:
        """queries [Q, 1, H, W] -> predicted labels [Q], values from the support labels."""
        best = self.scores(queries).argmax(-1).cpu().numpy()  # raises the teaching error before process_support
        assert self.support_labels is not None  # narrows the type; scores() has checked it
        return self.support_labels[best]


def calibrate_verification(net: SiameseNet, images: np.ndarray, pairs: Pairs, target: str) -> Calibration:
    """The verification threshold for `target`, measured on `pairs` indexing `images` [N, S, S] uint8.

    Each drawing is embedded once, as at inference (`embed_all`); a pair's score is `pair_similarity`.
    """
    used, inverse = np.unique(np.concatenate([pairs.a, pairs.b]), return_inverse=True)
    embeddings = embed_all(net, to_tensor(images[used]))
    first, second = np.split(inverse, 2)
    with torch.no_grad():
        sims = net.pair_similarity(embeddings[torch.from_numpy(first)], embeddings[torch.from_numpy(second)])
    return calibrate_threshold(sims.cpu().numpy(), pairs.same, target)


def save_siamese(net: SiameseNet, path: str, extra: dict[str, Any] | None = None) -> None:
    """Write weights with the constructor config, so the file alone rebuilds the network."""
    torch.save({"kind": "siamese", "config": net.config, "state_dict": net.state_dict(), **(extra or {})}, path)


def load_siamese(path: str) -> tuple[SiameseNet, dict[str, Any]]:
    """Rebuild the network from a `save_siamese` file. A missing file or any other file names itself."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        # weights_only: a checkpoint holds tensors, numbers, strings and containers, so a file from
        # elsewhere cannot run code when it is loaded.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (pickle, zip, EOF) for a file that is not a checkpoint
        raise ValueError(f"{path}: not a Siamese checkpoint written by this pipeline ({type(exc).__name__})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "siamese":
        raise ValueError(f"{path}: not a Siamese checkpoint written by this pipeline")
    net = SiameseNet(**ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), ckpt
