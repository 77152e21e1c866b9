"""The few-shot API: a `SiameseClassifier` takes a support set, then scores queries (easyfsl's shape).

Evaluation scores its episodes through it (`episode_scores`), and `oneshot-gda predict` scores a
user's support and queries through it, so both give the same answers for the same images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.classifiers.network import SiameseNet, folded
from pipeline.data.episodes import Episodes, episode_accuracy
from pipeline.hardware import bf16_is_fast


@torch.no_grad()
def embed_all(net: SiameseNet, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Embed [N, C, S, S] images in batches -> [N, D], under bf16 autocast where the hardware computes in bf16
    (AMX / AVX-512 BF16 CPUs, GPUs: `hardware.bf16_is_fast`), in fp32 elsewhere, where bf16 is emulated and slow.

    The network is switched to eval mode and channels_last (its weights' layout only, in place): bf16
    convolutions and max pooling run about 1.8x faster in it on CPU (embedding 8,192 drawings: 1.3 s vs
    2.3 s). It embeds through a copy with its BatchNorms folded into the convolutions (`network.folded`:
    one pass less per block, and none of the slow BatchNorm passes seen in fp32 on 2 cores). Batches of
    64 keep a batch's activations in cache: on 2 cores they embed about twice as many images a second as
    batches of 1,024 (6,000-9,800 vs 3,900-4,900 images/s, `python benchmarks/embed.py`).
    """
    net.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    device = next(net.parameters()).device
    if len(images) == 0:
        return torch.empty(0, int(net.config["embedding_dim"]), device=device)
    fast = folded(net).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_is_fast(device)):
            out.append(fast.embed(x).float())
    return torch.cat(out)


def class_prototypes(net: SiameseNet, embeddings: torch.Tensor, labels: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """One prototype per class: the mean of its embeddings, re-normalised for the metric losses.

    embeddings [S, D], labels [S] -> (classes [C] sorted, prototypes [C, D]); row c is classes[c]'s.
    """
    classes, inverse = np.unique(labels, return_inverse=True)
    index = torch.from_numpy(inverse.astype(np.int64)).to(embeddings.device)
    sums = torch.zeros(len(classes), embeddings.shape[1], device=embeddings.device).index_add_(0, index,
                                                                                             embeddings.float())
    protos = sums / torch.bincount(index, minlength=len(classes))[:, None].float()
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
        """images [S, C, H, W] in 0..1, labels [S]. Several images of a class are averaged."""
        self.process_support_embeddings(embed_all(self.net, images), labels)

    def process_support_embeddings(self, embeddings: torch.Tensor, labels: np.ndarray) -> None:
        """The same from support embeddings [S, D] already made by `embed_all` (an enrolled bank, an episode)."""
        self.support_labels, self.support_embeddings = class_prototypes(self.net, embeddings, labels)

    @torch.no_grad()
    def scores_embeddings(self, queries: torch.Tensor) -> torch.Tensor:
        """Query embeddings [Q, D] -> scores [Q, n_classes], column order = `support_labels`."""
        if self.support_embeddings is None:
            raise RuntimeError("call process_support(...) before scoring queries")
        return self.net.similarity(queries, self.support_embeddings)

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """queries [Q, C, H, W] -> scores [Q, n_classes], column order = `support_labels`."""
        if self.support_embeddings is None:
            raise RuntimeError("call process_support(...) before scoring queries")
        return self.scores_embeddings(embed_all(self.net, queries))

    def predict(self, queries: torch.Tensor) -> np.ndarray:
        """queries [Q, C, H, W] -> predicted labels [Q], values from the support labels."""
        best = self.scores(queries).argmax(-1).cpu().numpy()  # raises the teaching error before process_support
        assert self.support_labels is not None  # narrows the type; scores() has checked it
        return self.support_labels[best]


@torch.no_grad()
def episode_scores(net: SiameseNet, embeddings: torch.Tensor, episodes: Episodes,
                   extra_support: tuple[torch.Tensor, np.ndarray] | None = None) -> np.ndarray:
    """Scores [E, N queries, N classes] of episodes indexing rows of `embeddings` [M, D], each scored by a
    `SiameseClassifier` given the episode's support, as `oneshot-gda predict` scores a user's.

    extra_support: (embeddings [K, D], owner [K]): more support examples of a class, joined to the
    support image `owner` (a row of `embeddings`) wherever it is an episode's support (prototypes).
    """
    classifier = SiameseClassifier(net)
    by_owner: dict[int, torch.Tensor] = {}
    if extra_support is not None and len(extra_support[1]):
        extra, owner = extra_support
        order = np.argsort(owner, kind="stable")
        owners, starts = np.unique(owner[order], return_index=True)
        for o, rows in zip(owners, np.split(order, starts[1:]), strict=True):
            by_owner[int(o)] = extra[torch.from_numpy(rows)]
    out = np.empty((len(episodes), episodes.n_way, episodes.n_way), dtype=np.float32)
    columns = np.arange(episodes.n_way)
    for e in range(len(episodes)):
        support = embeddings[torch.from_numpy(episodes.support[e])]
        labels = columns
        joined = [(j, by_owner[int(s)]) for j, s in enumerate(episodes.support[e]) if int(s) in by_owner]
        if joined:
            support = torch.cat([support, *(rows for _, rows in joined)])
            labels = np.concatenate([columns, *(np.full(len(rows), j) for j, rows in joined)])
        classifier.process_support_embeddings(support, labels)
        out[e] = classifier.scores_embeddings(embeddings[torch.from_numpy(episodes.query[e])]).float().cpu().numpy()
    return out


def episode_scores_accuracy(net: SiameseNet, images: torch.Tensor, episodes: Episodes) -> np.ndarray:
    """Per-episode accuracy [E] of `net` on episodes indexing `images` [M, C, S, S]."""
    was_training = net.training
    acc = episode_accuracy(episode_scores(net, embed_all(net, images), episodes))
    net.train(was_training)
    return acc
