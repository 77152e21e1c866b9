"""One save/load path for every model: weights and constructor config in one safetensors file.

A checkpoint is `model.safetensors`: the state dict, and as metadata the model's kind, its
constructor config (`model.config`, JSON) and whatever else its stage records (JSON), so that
the file alone rebuilds the model (STYLE 7) and a later stage cannot drift from edited params.
safetensors holds tensors and strings only: loading a file from elsewhere cannot run code, which
`torch.load` guarantees only with `weights_only=True`. (diffusers' `ModelMixin` would give the
same through `save_pretrained`, but importing it costs 1.5 s, which every `oneshot-gda` call
would pay; see the README.)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from pipeline.io import atomic_path

if TYPE_CHECKING:  # torch is imported where weights are read or written: `FILENAME` alone needs none
    import torch

FILENAME = "model.safetensors"


class CheckpointError(ValueError):
    """A file is missing, or not a checkpoint of the expected kind."""


def save_checkpoint(model: torch.nn.Module, path: str | Path, kind: str, extra: dict[str, Any] | None = None) -> None:
    """Write `model`'s weights with `kind`, its constructor config and `extra` (JSON-serialisable).

    `safetensors.torch.save_model` stores a tensor that two names share (diffusers' blocks alias
    some convolutions) once, and `load_weights` restores both names.
    """
    from safetensors.torch import save_model

    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(model).__name__} has no `config` dict of its constructor arguments")
    metadata = {"kind": kind, "config": json.dumps(config), "extra": json.dumps(extra or {})}
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)
        _sort_metadata(tmp)


def _sort_metadata(path: Path) -> None:
    """Put the header's metadata keys in sorted order, in place. safetensors writes them from a Rust HashMap, in
    an order that changes from one process to the next: the same weights would give other bytes, another
    hash, and DVC would rerun every stage after. The header keeps its length (the same compact JSON)."""
    with path.open("r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(size)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) != len(raw.rstrip(b" ")):  # not the compact form safetensors wrote: leave it as it is
            return
        fh.seek(8)
        fh.write(text.ljust(size, b" "))


def _file(path: str | Path) -> Path:
    path = Path(path)
    return path / FILENAME if path.is_dir() else path


def read_checkpoint(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(constructor config, extra) of a `kind` checkpoint (a file, or a folder holding model.safetensors)."""
    path = _file(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        config, extra = json.loads(metadata["config"]), json.loads(metadata.get("extra", "{}"))
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a {kind} checkpoint written by this pipeline ({exc})") from exc
    if metadata.get("kind") != kind:
        raise CheckpointError(f"{path}: a {metadata.get('kind')!r} checkpoint, not a {kind} checkpoint")
    return config, extra


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a checkpoint's weights into `model` (built from its config); every name must match. Eval mode."""
    from safetensors.torch import load_model

    try:
        load_model(model, str(_file(path)), strict=True)
    except (SafetensorError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit {type(model).__name__} ({exc})") from exc
    return model.eval()


def load_checkpoint(path: str | Path, kind: str, build: Callable[..., torch.nn.Module],
                    **overrides: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from its checkpoint: `build(**config, **overrides)`, then its weights; in eval mode."""
    config, extra = read_checkpoint(path, kind)
    return load_weights(build(**{**config, **overrides}), path), extra
