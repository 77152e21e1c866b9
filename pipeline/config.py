"""Frozen, validated views of `params.yaml`.

Each stage reads only the sections it declares in `dvc.yaml`. A bad value fails at
load time with the key's dotted name, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ParamsError(ValueError):
    """A value in params.yaml is missing, unknown or out of range."""


# A number as a person writes it: what YAML 1.1 leaves a string (`1e-3`, `2E4`, `.5e1`) included.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamsError(f"params.yaml: `{key}` = {value!r} is not allowed; expected {allowed}")


def _coerce(tp: Any, value: Any, key: str, strict: bool = False) -> Any:
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
            return _coerce(candidates[0], value, key, strict)
        errors = []
        for inner in candidates:
            try:
                return _coerce(inner, value, key, strict)
            except ParamsError as exc:
                errors.append(str(exc).split("expected ")[-1])
        raise ParamsError(f"params.yaml: `{key}` = {value!r} is not allowed; expected {' or '.join(errors)}")
    if origin is Literal:
        _check(value in get_args(tp), key, value, "one of " + ", ".join(map(repr, get_args(tp))))
        return value
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), key, value, "a list")
        (inner, _) = get_args(tp) if len(get_args(tp)) == 2 else (get_args(tp)[0], ...)
        return tuple(_coerce(inner, v, f"{key}[{i}]", strict) for i, v in enumerate(value))
    if origin is dict:
        _check(isinstance(value, dict), key, value, "a mapping")
        _, inner = get_args(tp)
        return {k: _coerce(inner, v, f"{key}.{k}", strict) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key, strict)  # type: ignore[type-var, arg-type]
    if tp is bool:
        _check(isinstance(value, bool), key, value, "true or false")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML, DVC) reads `1e-3` as a string: it wants `1.0e-3`. Take the number meant.
            return float(value)
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value,
               "a number (YAML reads `1e-3` as a string unless it is written `1.0e-3`; both are taken)"
               if isinstance(value, str) else "a number")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, value, "a string")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def optional_keys(cls: type) -> set[str]:
    """The keys params.yaml may leave out of a `cls` section: those whose default is null (the feature is off),
    and those the class lists in `OPTIONAL`. Every other key must be spelt out, so that deleting one is an
    error rather than a silent fall back to the code's default."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return {f.name for f in fields if f.default is None} | set(getattr(cls, "OPTIONAL", ()))


def from_dict(cls: type[T], data: Any, key: str, strict: bool = False, optional: tuple[str, ...] = ()) -> T:
    """Build the frozen dataclass `cls` from a params mapping, naming `key` in errors.

    `strict` (params.yaml's sections, see `section`): a key that is not in `optional_keys(cls)` or
    `optional` must be given, also in nested sections. Otherwise the dataclass defaults fill what is left
    out (code and tests that build a config from a few keys)."""
    _check(isinstance(data, dict), key, data, "a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key `{key}.{unknown[0]}`; allowed keys under `{key}`: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    may_omit = optional_keys(cls) | set(optional) if strict else set(fields)
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{key}.{name}", strict)
        elif name not in may_omit or (field.default is dataclasses.MISSING
                                      and field.default_factory is dataclasses.MISSING):
            raise ParamsError(f"params.yaml: missing key `{key}.{name}`; add it (params.yaml of the project "
                              "shows every key with its default)")
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
    precision: str = "auto"  # bf16-mixed where the hardware has bf16, else 32-true (pipeline/hardware.py)
    num_nodes: int = 1
    channels_last: bool = True
    num_threads: int | None = None  # torch intra-op threads; null keeps torch's default

    def validate(self, key: str) -> None:
        positive(key, num_nodes=self.num_nodes, num_threads=self.num_threads)
        check_precision(self.precision, f"{key}.precision")
        _check(self.accelerator in ACCELERATORS, f"{key}.accelerator", self.accelerator,
               "one of " + ", ".join(ACCELERATORS))
        _check((isinstance(self.devices, int) and self.devices >= 1) or self.devices == "auto"
               or (isinstance(self.devices, str) and re.fullmatch(r"-1|\d+(,\d+)*,?", self.devices) is not None),
               f"{key}.devices", self.devices, "a count >= 1, auto, or a list of device indices such as '0,1'")
        if self.accelerator in ("gpu", "cuda", "mps"):
            import torch  # only when a GPU is asked for: reading params stays light

            present = torch.cuda.is_available() if self.accelerator != "mps" else torch.backends.mps.is_available()
            _check(present, f"{key}.accelerator", self.accelerator,
                   "an accelerator this machine has: none of that kind is visible to torch here (use cpu, or auto)")


# Lightning's accelerator names and precision settings (`lightning.Trainer`'s `accelerator`, `precision`), and
# the pipeline's own `auto` precision (`hardware.resolve_precision`).
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRECISIONS = ("auto", "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine")


def check_precision(value: str, key: str) -> None:
    _check(value in PRECISIONS, key, value, "one of " + ", ".join(PRECISIONS))


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "omniglot-oneshot"
    enabled: bool = True
    register: bool = True  # register the best one-shot variant's model and move `@champion` when it is as good
    registered_model: str = ""  # its name in the model registry; empty: the experiment's name


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


def section(params: dict[str, Any], cls: type[T], dotted: str, optional: tuple[str, ...] = ()) -> T:
    """Validate the params section at `dotted` (e.g. `generator.vae`) as `cls`, strictly: every key but
    the optional ones (`optional_keys`, plus `optional`) must be there."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"params.yaml: missing section `{dotted}`")
        node = node[part]
    return from_dict(cls, node, dotted, strict=True, optional=optional)
