"""`SiameseNet`: the embedding CNN shared by both twins, and its checkpoint.

Input [B, C, S, S] in 0..1, the channels and size of the data it was trained on (C = 1 or 3,
S >= 16): four conv blocks halve the side each time (28 -> 14 -> 7 -> 3 -> 1; 64 -> 4; 84 -> 5)
and a linear layer projects the flattened features to the embedding.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pipeline.checkpoints import load_checkpoint, save_checkpoint

KIND = "siamese"


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class SiameseNet(nn.Module):
    """Embedding CNN shared by both twins. Input [B, C, S, S] in 0..1 -> embedding [B, D]."""

    def __init__(self, image_size: int, channels: int = 64, embedding_dim: int = 128, loss: str = "contrastive",
                 in_channels: int = 1):
        super().__init__()
        self.config: dict[str, Any] = {"image_size": image_size, "channels": channels, "embedding_dim": embedding_dim,
                                       "loss": loss, "in_channels": in_channels}
        self.loss = loss
        self.features = nn.Sequential(conv_block(in_channels, channels), conv_block(channels, channels),
                                      conv_block(channels, channels), conv_block(channels, channels))
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for four 2x down-samplings; use at least 16")
        self.project = nn.Linear(channels * side * side, embedding_dim)
        # Koch et al. (2015): a weighted L1 distance between the twins' embeddings, then a sigmoid.
        self.head = nn.Linear(embedding_dim, 1) if loss == "bce" else None

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] -> [B, D]; L2-normalised for the metric losses."""
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
        """Pairwise likeness of two image batches [B, C, S, S] -> [B]."""
        return self.pair_similarity(self.embed(a), self.embed(b))


def folded(net: SiameseNet) -> SiameseNet:
    """An inference copy of `net` (eval mode) with each BatchNorm folded into the convolution before it.

    The fold uses the running statistics, as eval mode does, so the copy gives the same embeddings within
    float rounding (1e-7 in fp32). It saves a pass over every block's activations, and one that ran slow at
    times: on 2 CPU cores in fp32 the eval-mode BatchNorm pass of a trained network at times halved the
    embedding rate (2,000-2,900 against 4,400-6,300 images/s folded; with flush-to-zero it did not, so
    subnormal floats), and the smoke profile's `evaluate` stage took 65-111 s unfolded against 52-63 s
    folded (`python benchmarks/embed.py --model ... --data ...` prints both rates). `net` is left as it is.
    """
    out = copy.deepcopy(net).eval()
    for block in out.features.children():
        if isinstance(block, nn.Sequential) and isinstance(block[0], nn.Conv2d) \
                and isinstance(block[1], nn.BatchNorm2d):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    return out


def model_identity(net: SiameseNet) -> str:
    """sha256 of the constructor config and every weight: which network made an embedding."""
    digest = hashlib.sha256(json.dumps(net.config, sort_keys=True).encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def image_spec_of(net: SiameseNet, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The image spec a checkpoint saved, or for an older one (saved none): grayscale drawings of its size, inverted."""
    return saved if saved is not None else {"size": net.image_size, "channels": net.config.get("in_channels", 1),
                                            "invert": True}


def save_siamese(net: SiameseNet, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Weights with the constructor config (and `extra`: variant, verification threshold, image spec)."""
    save_checkpoint(net, path, KIND, extra)


def load_siamese(path: str | Path) -> tuple[SiameseNet, dict[str, Any]]:
    """Rebuild the network from a `save_siamese` file (or its folder): (net in eval mode, extra)."""
    net, extra = load_checkpoint(path, KIND, SiameseNet)
    assert isinstance(net, SiameseNet)
    return net, extra
