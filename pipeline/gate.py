"""The regression gate: a run's metrics against floors and a committed reference, and the report a reviewer reads.

Pure functions on plain mappings (variant -> metric -> number, the shape of `reports/metrics.json`);
`stages/gate.py` reads the files, prints, writes the report and sets the exit code.

Every compared metric is one where higher is better (accuracies and their deltas). A drop fails when
it exceeds its tolerance: the larger of `gate.margin` and the 95% CI half-width of the difference,
sqrt(ci_now^2 + ci_reference^2) from the metric's `<name>_ci95` entries, so episode noise does not fail.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import Any, ClassVar, Literal

from pipeline.config import _check

Metrics = dict[str, dict[str, float]]
CI_SUFFIX = "_ci95"

# Upper case verdicts fail the gate.
Verdict = Literal["ok", "better", "new", "FAIL", "MISSING"]
FAILING = ("FAIL", "MISSING")


@dataclasses.dataclass(frozen=True)
class GateConfig:
    OPTIONAL: ClassVar[tuple[str, ...]] = ("floors",)  # may be left out: the reference alone

    reference: str  # this profile's committed reference metrics, relative to the project root
    compare: tuple[str, ...] = ("acc_*", "delta_*")  # metrics (glob patterns) compared with the reference
    margin: float = 0.01  # least tolerance of a drop, also for metrics without a CI
    floors: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # variant -> metric -> minimum

    def validate(self, key: str) -> None:
        _check(self.reference.endswith(".json"), f"{key}.reference", self.reference, "a path to a .json file")
        _check(len(self.compare) > 0, f"{key}.compare", self.compare, "a non-empty list of metric name patterns")
        _check(self.margin >= 0, f"{key}.margin", self.margin, "a number >= 0")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One metric of one variant against the reference; `now` or `reference` is None where absent."""

    variant: str
    metric: str
    reference: float | None
    now: float | None
    tolerance: float | None
    verdict: Verdict

    @property
    def change(self) -> float | None:
        return None if self.now is None or self.reference is None else self.now - self.reference


@dataclasses.dataclass(frozen=True)
class FloorCheck:
    variant: str
    metric: str
    floor: float
    now: float | None
    verdict: Verdict


@dataclasses.dataclass(frozen=True)
class GateResult:
    comparisons: list[Comparison]
    floors: list[FloorCheck]
    reference_name: str  # how the text names the reference (its path)
    metrics_name: str  # and the metrics under test
    new_variants: list[str]  # in the metrics, not in the reference yet: reported, not failed
    params_name: str = "params.yaml"  # where the floors come from (a profile's params: its overrides too)

    @property
    def passed(self) -> bool:
        return not any(c.verdict in FAILING for c in self.comparisons) and not any(
            f.verdict in FAILING for f in self.floors)

    def failures(self) -> list[str]:
        """One line per failed check, naming the variant, the metric and by how much."""
        lines = []
        for c in self.comparisons:
            if c.verdict == "FAIL":
                lines.append(f"FAIL: {c.variant} {c.metric} fell {_num(-(c.change or 0.0))} "
                             f"({_num(c.reference)} -> {_num(c.now)}; tolerance {_num(c.tolerance)})")
            elif c.verdict == "MISSING":
                lines.append(f"FAIL: {c.variant} {c.metric} is in {self.reference_name} but not in {self.metrics_name}"
                             " (if it was removed on purpose, refresh the reference: `make reference`)")
        for f in self.floors:
            if f.verdict == "FAIL":
                lines.append(f"FAIL: {f.variant} {f.metric} = {_num(f.now)} is below its floor {f.floor:.3f} "
                             f"({self.params_name}: gate.floors)")
            elif f.verdict == "MISSING":
                lines.append(f"FAIL: {f.variant} {f.metric} has a floor ({self.params_name}: gate.floors) "
                             f"but is not in {self.metrics_name}")
        return lines


def validate_metrics(data: Any, source: str, fix: str) -> Metrics:
    """Check the shape variant -> metric -> number; an error names `source`, what is wrong and `fix`."""
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{source}: expected a mapping of variant -> metrics, got {type(data).__name__}; {fix}")
    for variant, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"{source}: `{variant}` should map metric names to numbers, "
                             f"got {type(values).__name__}; {fix}")
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{source}: `{variant}.{metric}` = {value!r} is not a finite number; {fix}")
    return {v: {k: float(x) for k, x in m.items()} for v, m in data.items()}


def compared_metrics(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The metric names (in their order) that match a pattern; a `_ci95` entry is its metric's CI, not a metric."""
    return [n for n in names
            if not n.endswith(CI_SUFFIX) and any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def tolerance(metric: str, now: dict[str, float], reference: dict[str, float], margin: float) -> float:
    """The largest drop of `metric` that is noise: max(margin, 95% CI half-width of now - reference).

    The two runs' CIs combine as for independent estimates; that over-states the noise of a paired
    difference (both runs score the same seeded episodes), so the gate errs towards passing noise.
    """
    ci = math.hypot(now.get(metric + CI_SUFFIX, 0.0), reference.get(metric + CI_SUFFIX, 0.0))
    return max(margin, ci)


def compare(now: Metrics, reference: Metrics, cfg: GateConfig) -> list[Comparison]:
    """Every compared metric of every variant in either file. A variant or metric only in `now` is
    `new` (it passes); one only in the reference is `MISSING` (it fails)."""
    rows = []
    for variant in [*reference, *(v for v in now if v not in reference)]:
        ref, cur = reference.get(variant, {}), now.get(variant, {})
        names = compared_metrics([*ref, *(m for m in cur if m not in ref)], cfg.compare)
        for metric in names:
            if metric not in ref:
                rows.append(Comparison(variant, metric, None, cur[metric], None, "new"))
            elif metric not in cur:
                rows.append(Comparison(variant, metric, ref[metric], None, None, "MISSING"))
            else:
                tol = tolerance(metric, cur, ref, cfg.margin)
                change = cur[metric] - ref[metric]
                verdict: Verdict = "FAIL" if change < -tol else "better" if change > tol else "ok"
                rows.append(Comparison(variant, metric, ref[metric], cur[metric], tol, verdict))
    return rows


def check_floors(now: Metrics, floors: dict[str, dict[str, float]]) -> list[FloorCheck]:
    """`metric >= floor` for every floor; a floor on a variant or metric absent from `now` fails."""
    checks = []
    for variant, per_metric in floors.items():
        for metric, floor in per_metric.items():
            value = now.get(variant, {}).get(metric)
            verdict: Verdict = "MISSING" if value is None else "ok" if value >= floor else "FAIL"
            checks.append(FloorCheck(variant, metric, floor, value, verdict))
    return checks


def run_gate(now: Metrics, reference: Metrics, cfg: GateConfig, metrics_name: str,
             params_name: str = "params.yaml") -> GateResult:
    return GateResult(compare(now, reference, cfg), check_floors(now, cfg.floors), cfg.reference, metrics_name,
                      [v for v in now if v not in reference], params_name)


# ---------------------------------------------------------------------------- text


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table padded to aligned columns, so it reads the same in a terminal and rendered."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def comparison_table(rows: Sequence[Comparison]) -> str:
    return markdown_table(
        ["variant", "metric", "reference", "now", "change", "tolerance", "verdict"],
        [[c.variant, c.metric, _num(c.reference), _num(c.now),
          "missing" if c.verdict == "MISSING" else _num(c.change, signed=True),
          "-" if c.tolerance is None else f"±{c.tolerance:.3f}", c.verdict] for c in rows])


def floor_table(rows: Sequence[FloorCheck]) -> str:
    return markdown_table(["variant", "metric", "floor", "now", "verdict"],
                          [[f.variant, f.metric, f">= {f.floor:.3f}", _num(f.now), f.verdict] for f in rows])


def verdict_line(result: GateResult) -> str:
    n = len(result.comparisons) + len(result.floors)
    new = f"; new, not in the reference yet: {', '.join(result.new_variants)}" if result.new_variants else ""
    return f"gate: {'PASS' if result.passed else 'FAIL'} ({n} checks of {result.metrics_name}{new})"


def gate_text(result: GateResult) -> str:
    """What `make gate` prints: both tables, then one line per failure and the verdict."""
    parts = [f"Against the reference {result.reference_name} (a drop fails beyond its tolerance):", "",
             comparison_table(result.comparisons) if result.comparisons else "(nothing to compare)", ""]
    if result.floors:
        parts += [f"Floors ({result.params_name}: `gate.floors`):", "", floor_table(result.floors), ""]
    return "\n".join([*parts, *result.failures(), verdict_line(result)])


def results_table(metrics: Metrics, keys: Sequence[str]) -> str:
    """One row per variant that has any of `keys`: value ± 95% CI where the metric has one, deltas signed."""

    def cell(m: dict[str, float], key: str) -> str:
        if key not in m:
            return ""
        value = _num(m[key], signed=key.startswith("delta_"))
        return f"{value} ± {m[key + CI_SUFFIX]:.3f}" if key + CI_SUFFIX in m else value

    return markdown_table(["variant", *keys], [[v, *(cell(m, k) for k in keys)] for v, m in metrics.items()
                                               if any(k in m for k in keys)])


def report_markdown(metrics: Metrics, result: GateResult, pictures: Sequence[tuple[str, str]]) -> str:
    """`reports/report.md`: the verdict first, then the per-variant results, the gate's tables and the pictures.

    pictures: (caption, path relative to the report) pairs.
    """
    names = list(dict.fromkeys(k for m in metrics.values() for k in m if not k.endswith(CI_SUFFIX)))
    scores = [n for n in names if n.startswith(("acc_", "delta_"))]
    others = [n for n in names if n not in scores]
    lines = [f"# One-shot Omniglot: results and regression gate ({result.metrics_name})", "",
             f"Gate: **{'PASS' if result.passed else 'FAIL'}** against `{result.reference_name}` "
             f"and the floors in `{result.params_name}` (`gate.floors`)."]
    notes = [f"- {line}" for line in result.failures()]
    if result.new_variants:
        notes.append(f"- new, not in the reference yet: {', '.join(result.new_variants)}")
    lines += ["", *notes, ""] if notes else [""]
    lines += ["## Results per variant", "",
              "Novel classes, one-shot; every variant is scored on the same seeded episodes; ± is the 95% CI "
              "half-width; `delta_*` are paired per-episode differences.", "", results_table(metrics, scores), ""]
    if others:
        lines += [results_table(metrics, others), ""]
    lines += ["## Regression gate", "",
              f"Against `{result.reference_name}`: a drop fails when it exceeds its tolerance, the larger of "
              "`gate.margin` and the 95% CI of the difference.", "", comparison_table(result.comparisons), ""]
    if result.floors:
        lines += [f"Floors (`gate.floors` in `{result.params_name}`):", "", floor_table(result.floors), ""]
    if pictures:
        lines += ["## Pictures", "", "Interactive: `dvc plots show` (learning curves, accuracy per variant).", ""]
        for caption, path in pictures:
            lines += [f"### {caption}", "", f"![{PurePath(path).stem}]({path})", ""]
    return "\n".join(lines)
