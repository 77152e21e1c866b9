"""Every section of params.yaml, checked at once: what the `check_params` stage runs before any other stage.

DVC deletes a stage's outputs before the stage reads its params. A stage that checks only its own section
therefore fails after its old outputs are gone, and for `cache: false` outputs (metrics, plot data) nothing
brings them back. Every stage of dvc.yaml depends on `check_params`' output, so a bad value anywhere stops
`dvc repro` and `dvc exp run` before any stage has deleted anything. What a stage needs from the data
itself (an N-way episode needs N novel classes) is checked by that stage, whose unrestorable outputs
DVC keeps (`persist`) and which writes them only whole.
"""

from __future__ import annotations

from typing import Any

from pipeline.classifiers.config import SiameseConfig
from pipeline.config import ParamsError, TrackingConfig, TrainerConfig, _check, section
from pipeline.data.augment import ClassicAugmentConfig
from pipeline.data.prepare import DataConfig, resolve
from pipeline.evaluation import EvaluationConfig
from pipeline.gate import GateConfig
from pipeline.generators import CONFIGS
from pipeline.generators.synthesis import SweepConfig, SynthesisConfig
from pipeline.variants import VariantConfig

# Top-level section -> its class (None: checked by hand below).
SECTIONS: dict[str, type | None] = {
    "data": DataConfig, "trainer": TrainerConfig, "tracking": TrackingConfig, "generator": None,
    "synthesis": SynthesisConfig, "augment": ClassicAugmentConfig, "sweep": SweepConfig, "siamese": SiameseConfig,
    "reference": SiameseConfig, "variants": None, "evaluation": EvaluationConfig, "gate": GateConfig,
}


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate every section and the names that tie sections together; raise `ParamsError` naming the key.

    Returns the validated sections by dotted name (what each stage would build)."""
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"params.yaml: unknown section `{unknown[0]}`; the sections are {', '.join(SECTIONS)}")
    missing = [name for name in SECTIONS if name not in params]
    if missing:
        raise ParamsError(f"params.yaml: missing section `{missing[0]}`")
    checked: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        if cls is not None:
            omits = SiameseConfig.REFERENCE_OMITS if name == "reference" else ()
            checked[name] = section(params, cls, name, optional=omits)

    data: DataConfig = checked["data"]
    for key, value in (("path", data.path), ("split_file", data.split_file)):
        if value is not None and (key != "path" or data.source == "folder"):
            _check(resolve(value).exists(), f"data.{key}", value,
                   f"an existing {'file' if key == 'split_file' else 'folder or .zip'} (it is not there: "
                   "relative paths are relative to the project root)")

    generator = params["generator"]
    _check(isinstance(generator, dict) and "enabled" in generator, "generator", generator,
           "a mapping with `enabled` (a list of generator names) and a section per generator")
    enabled = generator["enabled"]
    _check(isinstance(enabled, list) and len(set(map(str, enabled))) == len(enabled)
           and set(enabled) <= set(CONFIGS) and len(enabled) > 0, "generator.enabled", enabled,
           f"a non-empty list of distinct generator names among {', '.join(CONFIGS)}")
    for name in sorted(set(generator) - {"enabled"}):
        _check(name in CONFIGS, f"generator.{name}", "...", f"a section of a generator among "
               f"{', '.join(CONFIGS)}")
        checked[f"generator.{name}"] = section(params, CONFIGS[name], f"generator.{name}")
    for name in enabled:
        if name not in generator:
            raise ParamsError(f"params.yaml: `generator.enabled` lists {name!r} but there is no section "
                              f"`generator.{name}`")

    variants = params["variants"]
    _check(isinstance(variants, dict) and len(variants) > 0, "variants", variants,
           "a mapping of at least one variant name to its training sources")
    for name in variants:
        key = f"variants.{name}"
        variant = section(params, VariantConfig, key)
        _check(variant.synthetic == "none" or variant.synthetic in enabled, f"{key}.synthetic", variant.synthetic,
               f"none or a generator of generator.enabled ({', '.join(enabled)})")
        variant.training_config(checked["siamese"], key)  # the changes laid over the siamese params
        checked[key] = variant

    evaluation: EvaluationConfig = checked["evaluation"]
    for key, ref in [("baseline", evaluation.baseline)] + [("compare_with", r) for r in evaluation.compare_with]:
        _check(ref in variants, f"evaluation.{key}", ref, f"a variant of `variants` ({', '.join(variants)})")
    gate: GateConfig = checked["gate"]
    for name, floors in gate.floors.items():
        _check(name in variants, f"gate.floors.{name}", floors,
               f"floors of a variant of `variants` ({', '.join(variants)}); remove them with the variant")
    return checked
