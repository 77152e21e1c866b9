"""Every kind of params mistake, and what its message must name: pipeline/schema.py's check (the
`check_params` stage) on the tiny profile's params, in process. That the check runs before any stage
deletes an output, through DVC, is tests/test_faults.py's."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import ParamsError
from pipeline.profile import profile_params
from pipeline.schema import check_params

ROOT = Path(__file__).resolve().parents[1]
TINY = profile_params(ROOT / "params.yaml", "tiny")

# (case, key, value or DELETE, what the message must say). Each is a kind of mistake a user makes. An episode
# wider than the data's classes depends on the data: its stage says so (tests/test_faults.py).
DELETE = object()
BAD_PARAMS = [
    ("negative sweep count", "sweep.counts", [-1, 4], "`sweep.counts`"),
    ("unknown generator of a variant", "variants.gan.synthetic", "diffusion", "`variants.gan.synthetic`"),
    ("image too small", "data.image_size", 8, "`data.image_size` = 8"),
    ("deleted key", "siamese.max_steps", DELETE, "missing key `siamese.max_steps`"),
    ("no such accelerator here", "trainer.accelerator", "gpu", "`trainer.accelerator` = 'gpu'"),
    ("unknown loss", "siamese.loss", "hinge", "`siamese.loss` = 'hinge'"),
    ("unknown generator enabled", "generator.enabled", ["gan", "diffusion"], "`generator.enabled`"),
    ("unknown baseline", "evaluation.baseline", "nope", "`evaluation.baseline` = 'nope'"),
    ("unknown reference", "evaluation.compare_with", ["nope"], "`evaluation.compare_with` = 'nope'"),
    ("floors of no variant", "gate.floors", {"nope": {"acc_20way": 0.5}}, "`gate.floors.nope`"),
    ("unknown section", "extra", {"a": 1}, "unknown section `extra`"),
    ("misspelt key", "siamese.lrr", 0.1, "unknown key `siamese.lrr`"),
    ("bad channel count", "data.channels", 2, "`data.channels` = 2"),
    ("zero temperature", "synthesis.temperature", 0, "`synthesis.temperature` = 0"),
    ("zero batch", "siamese.batch_classes", 0, "`siamese.batch_classes` = 0"),
    ("unknown precision", "trainer.precision", "bf16", "`trainer.precision` = 'bf16'"),
    ("no variants", "variants", {}, "`variants` = {}"),
    ("zero groups to a role", "data.roles", {"source": 0, "calibration": 2, "train": None}, "`data.roles`"),
    ("folder without a path", "data.source", "folder", "`data.path` = None"),
    ("bad verification target", "siamese.verify_target", "far@2", "`siamese.verify_target` = 'far@2'"),
    ("one episode", "evaluation.n_episodes", 1, "`evaluation.n_episodes` = 1"),
    ("bad generator widths", "generator.gan.widths", [12, 60], "`generator.gan.widths`"),
    ("a word for a number", "siamese.lr", "fast", "`siamese.lr` = 'fast'"),
    ("misspelt variant change", "variants.gan.siamese", {"max_step": 10}, "unknown key `variants.gan.siamese."),
    ("zero devices", "trainer.devices", 0, "`trainer.devices` = 0"),
    ("missing split file", "data.split_file", "splits/none.csv", "`data.split_file` = 'splits/none.csv'"),
    ("negative exemplar count", "synthesis.n_per_exemplar", -1, "`synthesis.n_per_exemplar` = -1"),
]




def edited(dotted: str, value: Any) -> dict[str, Any]:
    params = copy.deepcopy(TINY)
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return params


def test_the_tiny_profile_itself_is_valid() -> None:
    assert set(check_params(copy.deepcopy(TINY))) >= {"data", "siamese", "evaluation"}


@pytest.mark.parametrize(("key", "value", "message"), [c[1:] for c in BAD_PARAMS], ids=[c[0] for c in BAD_PARAMS])
def test_a_bad_param_is_named_with_what_is_allowed(key: str, value: Any, message: str) -> None:
    with pytest.raises((ParamsError, FileNotFoundError)) as caught:
        check_params(edited(key, value))
    assert message in str(caught.value)
