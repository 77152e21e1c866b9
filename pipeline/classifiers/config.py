"""The Siamese classifier's params (`siamese`, `reference`, a variant's changes): plain Python, so that
validating params.yaml imports neither torch nor Lightning."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from pipeline.classifiers.verification import TARGET_PATTERN, TARGETS
from pipeline.config import _check, positive

LOSSES = ("contrastive", "bce", "triplet", "proto")


@dataclasses.dataclass(frozen=True)
class SiameseConfig:
    loss: Literal["contrastive", "bce", "triplet", "proto"] = "contrastive"
    channels: int = 64  # conv channels of each of the four blocks
    embedding_dim: int = 128
    margin: float = 0.5  # contrastive: cosine margin for negatives; triplet: distance margin
    mining: Literal["random", "hard"] = "hard"  # each anchor's negative: a random or the most alike other class
    temperature: float = 0.1  # proto: cosine similarities are divided by it before the softmax
    rotated_classes: bool = False  # also train on each class rotated by 90, 180, 270 degrees, as 3 new classes
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_classes: int = 64  # P classes per batch, two drawings each
    max_steps: int = 2000
    val_every: int = 250  # steps between validations (seen-class episodes)
    seed: int = 0
    verify_target: str = "eer"  # what the saved verification threshold meets: `eer` or `far@X`
    verify_pairs: int = 2000  # same-class and as many different-class pairs of source classes to calibrate it on

    # The `reference` section trains with this class too, but is neither validated during training nor
    # calibrated for verification: these keys mean nothing there and it may leave them out.
    REFERENCE_OMITS: ClassVar[tuple[str, ...]] = ("val_every", "verify_target", "verify_pairs")

    def validate(self, key: str) -> None:
        _check(self.loss in LOSSES, f"{key}.loss", self.loss, "one of " + ", ".join(LOSSES))
        _check(TARGET_PATTERN.fullmatch(self.verify_target) is not None, f"{key}.verify_target", self.verify_target,
               TARGETS)
        positive(key, channels=self.channels, embedding_dim=self.embedding_dim, lr=self.lr,
                 max_steps=self.max_steps, val_every=self.val_every, verify_pairs=self.verify_pairs)
        _check(self.batch_classes >= 2, f"{key}.batch_classes", self.batch_classes, "at least 2")
        _check(self.margin >= 0, f"{key}.margin", self.margin, "a number >= 0")
        _check(self.temperature > 0, f"{key}.temperature", self.temperature, "a number > 0")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", self.weight_decay, "a number >= 0")
