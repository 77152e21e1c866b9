"""Frozen, validated views of `params.yaml`.

Each stage reads only the sections it declares in `dvc.yaml`. A bad value fails at
load time with the key's dotted name, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ParamsError(ValueError):
    """A value in params.yaml is missing, unknown or out of range."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamsError(f"params.yaml: `{key}` = {value!r} is not allowed; expected {allowed}")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            _check(type(None) in options, key, value, "a value, not null")
            return None
        candidates = [t for t in options if t is not type(None)]
        if len(candidates) == 1:
            # `X | None`: X's own error already names the deepest key (e.g. `data.download.base_url`).
            return _coerce(candidates[0], value, key)
        errors = []
        for inner in candidates:
            try:
                return _coerce(inner, value, key)
            except ParamsError as exc:
                errors.append(str(exc).split("expected ")[-1])
        raise ParamsError(f"params.yaml: `{key}` = {value!r} is not allowed; expected {' or '.join(errors)}")
    if origin is Literal:
        _check(value in get_args(tp), key, value, "one of " + ", ".join(map(repr, get_args(tp))))
        return value
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), key, value, "a list")
        (inner, _) = get_args(tp) if len(get_args(tp)) == 2 else (get_args(tp)[0], ...)
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _check(isinstance(value, dict), key, value, "a mapping")
        _, inner = get_args(tp)
        return {k: _coerce(inner, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)  # type: ignore[type-var, arg-type]
    if tp is bool:
        _check(isinstance(value, bool), key, value, "true or false")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "a number")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, value, "a string")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def from_dict(cls: type[T], data: Any, key: str) -> T:
    """Build the frozen dataclass `cls` from a params mapping, naming `key` in errors."""
    _check(isinstance(data, dict), key, data, "a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key `{key}.{unknown[0]}`; allowed keys under `{key}`: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{key}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamsError(f"params.yaml: missing key `{key}.{name}`")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(key)
    return obj


def non_negative(key: str, **values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None:
            _check(value >= 0, f"{key}.{name}", value, "a number >= 0")


def positive(key: str, **values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None:
            _check(value > 0, f"{key}.{name}", value, "a number > 0")


# ---------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Passed straight to `lightning.Trainer`, so the same stage runs on a GPU or many nodes."""

    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "bf16-mixed"
    num_nodes: int = 1
    channels_last: bool = True
    num_threads: int | None = None  # torch intra-op threads; null keeps torch's default

    def validate(self, key: str) -> None:
        positive(key, num_nodes=self.num_nodes, num_threads=self.num_threads)


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "omniglot-oneshot"
    enabled: bool = True


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml as a plain mapping; a missing or malformed file names itself."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found; run the stage from the project root")
    with path.open() as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def section(params: dict[str, Any], cls: type[T], dotted: str) -> T:
    """Validate the params section at `dotted` (e.g. `generator.vae`) as `cls`."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml: missing section `{dotted}`")
        node = node[part]
    return from_dict(cls, node, dotted)
