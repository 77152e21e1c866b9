"""The regression gate: the comparison's arithmetic on tiny inputs, then `python -m stages.gate` for real
against the committed references/default.json with a degraded, a noisy, a shrunk and a broken metrics file."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ParamsError, from_dict, load_params, section
from pipeline.gate import (
    GateConfig,
    check_floors,
    compare,
    compared_metrics,
    gate_text,
    report_markdown,
    run_gate,
    tolerance,
    validate_metrics,
)
from pipeline.profile import overlay, profile_params

ROOT = Path(__file__).resolve().parents[1]
CFG = GateConfig(reference="references/test.json", margin=0.01)


def verdicts(rows: list) -> dict[tuple[str, str], str]:
    return {(r.variant, r.metric): r.verdict for r in rows}


# ---------------------------------------------------------------------------- arithmetic


def test_tolerance_is_the_combined_ci_or_the_margin_whichever_is_larger() -> None:
    now, ref = {"acc": 0.5, "acc_ci95": 0.03}, {"acc": 0.5, "acc_ci95": 0.04}
    assert tolerance("acc", now, ref, margin=0.01) == pytest.approx(0.05)  # sqrt(0.03^2 + 0.04^2)
    assert tolerance("acc", now, ref, margin=0.2) == 0.2
    assert tolerance("consistency", {"consistency": 0.9}, {"consistency": 0.9}, margin=0.02) == 0.02  # no CI


def test_a_drop_fails_only_beyond_its_tolerance_and_a_rise_is_better() -> None:
    ref = {"v": {"acc_a": 0.80, "acc_a_ci95": 0.03, "acc_b": 0.80, "acc_b_ci95": 0.03, "acc_c": 0.5,
                 "acc_d": 0.5}}
    tol = math.hypot(0.03, 0.03)
    now = {"v": {"acc_a": 0.80 - tol + 1e-4, "acc_a_ci95": 0.03, "acc_b": 0.80 - tol - 1e-4, "acc_b_ci95": 0.03,
                 "acc_c": 0.52, "acc_d": 0.5}}
    rows = compare(now, ref, CFG)
    assert verdicts(rows) == {("v", "acc_a"): "ok", ("v", "acc_b"): "FAIL", ("v", "acc_c"): "better",
                              ("v", "acc_d"): "ok"}
    (b,) = (r for r in rows if r.metric == "acc_b")
    assert b.change == pytest.approx(-tol - 1e-4) and b.tolerance == pytest.approx(tol)


def test_only_matching_metrics_are_compared_and_a_ci_is_not_a_metric() -> None:
    names = ["acc_20way", "acc_20way_ci95", "delta_20way_vs_baseline", "synthetic_diversity"]
    assert compared_metrics(names, ["acc_*", "delta_*"]) == ["acc_20way", "delta_20way_vs_baseline"]
    rows = compare({"v": {"acc_x": 0.5, "synthetic_diversity": 0.1}}, {"v": {"acc_x": 0.5, "synthetic_diversity": 0.9}},
                   CFG)
    assert [r.metric for r in rows] == ["acc_x"]


def test_new_variants_and_metrics_pass_missing_ones_fail() -> None:
    ref = {"base": {"acc_x": 0.5}, "vae": {"acc_x": 0.7, "acc_y": 0.6}}
    now = {"base": {"acc_x": 0.5, "delta_new": 0.1}, "vae": {"acc_x": 0.7}, "gan": {"acc_x": 0.75}}
    result = run_gate(now, ref, CFG, "metrics.json")
    assert verdicts(result.comparisons) == {("base", "acc_x"): "ok", ("base", "delta_new"): "new",
                                            ("vae", "acc_x"): "ok", ("vae", "acc_y"): "MISSING",
                                            ("gan", "acc_x"): "new"}
    assert result.new_variants == ["gan"] and not result.passed
    assert result.failures() == ["FAIL: vae acc_y is in references/test.json but not in metrics.json "
                                 "(if it was removed on purpose, refresh the reference: `make reference`)"]
    del ref["vae"]["acc_y"]
    assert run_gate(now, ref, CFG, "metrics.json").passed  # a new variant alone passes


def test_floors_hold_whatever_the_reference_says() -> None:
    now = {"vae": {"acc_20way": 0.70, "delta_20way_vs_classic": -0.01}}
    checks = check_floors(now, {"vae": {"acc_20way": 0.70, "delta_20way_vs_classic": 0.0, "acc_5way": 0.8},
                                "gan": {"acc_20way": 0.5}})
    assert [(c.variant, c.metric, c.verdict) for c in checks] == [
        ("vae", "acc_20way", "ok"), ("vae", "delta_20way_vs_classic", "FAIL"), ("vae", "acc_5way", "MISSING"),
        ("gan", "acc_20way", "MISSING")]
    result = run_gate(now, now, GateConfig(reference="r.json", floors={"vae": {"delta_20way_vs_classic": 0.0}}), "m")
    assert not result.passed
    assert result.failures() == ["FAIL: vae delta_20way_vs_classic = -0.010 is below its floor 0.000 "
                                 "(params.yaml: gate.floors)"]


def test_table_and_report_name_what_fell_and_by_how_much() -> None:
    ref = {"baseline": {"acc_20way": 0.37, "acc_20way_ci95": 0.007},
           "vae": {"acc_20way": 0.829, "acc_20way_ci95": 0.005, "delta_20way_vs_baseline": 0.455,
                   "delta_20way_vs_baseline_ci95": 0.008, "synthetic_diversity": 0.85}}
    now = copy.deepcopy(ref)
    now["vae"]["acc_20way"] = 0.729
    result = run_gate(now, ref, CFG, "reports/metrics.json")
    text = gate_text(result)
    assert "| variant  | metric                  | reference | now   | change | tolerance | verdict |" in text
    assert "| vae      | acc_20way               | 0.829     | 0.729 | -0.100 | ±0.010    | FAIL    |" in text
    assert text.splitlines()[-2] == "FAIL: vae acc_20way fell 0.100 (0.829 -> 0.729; tolerance 0.010)"
    assert text.splitlines()[-1] == "gate: FAIL (3 checks of reports/metrics.json)"
    report = report_markdown(now, result, [("Learning curves", "curves.png")])
    assert "Gate: **FAIL** against `references/test.json`" in report
    assert "| vae      | 0.729 ± 0.005 | +0.455 ± 0.008          |" in report
    assert "| vae     | 0.850               |" in report  # measures without a CI in their own table
    assert "![curves](curves.png)" in report


def test_malformed_metrics_name_the_file_the_entry_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"^m\.json: expected a mapping of variant -> metrics, got list; regenerate"):
        validate_metrics([0.5], "m.json", "regenerate it")
    with pytest.raises(ValueError, match=r"m\.json: `vae` should map metric names to numbers, got float"):
        validate_metrics({"vae": 0.5}, "m.json", "fix")
    with pytest.raises(ValueError, match=r"m\.json: `vae\.acc_20way` = 'high' is not a finite number"):
        validate_metrics({"vae": {"acc_20way": "high"}}, "m.json", "fix")
    with pytest.raises(ValueError, match=r"`vae\.acc_20way` = nan"):
        validate_metrics({"vae": {"acc_20way": float("nan")}}, "m.json", "fix")


def test_gate_params_are_validated_at_load() -> None:
    with pytest.raises(ParamsError, match=r"`gate\.margin` = -0\.1 is not allowed; expected a number >= 0"):
        from_dict(GateConfig, {"reference": "r.json", "margin": -0.1}, "gate")
    with pytest.raises(ParamsError, match=r"`gate\.floors\.vae\.acc_20way` = 'x' .*expected a number"):
        from_dict(GateConfig, {"reference": "r.json", "floors": {"vae": {"acc_20way": "x"}}}, "gate")
    with pytest.raises(ParamsError, match=r"unknown key `gate\.tolerance`"):
        from_dict(GateConfig, {"reference": "r.json", "tolerance": 0.1}, "gate")
    with pytest.raises(ParamsError, match=r"`gate\.reference` = 'refs/' .*a \.json file"):
        from_dict(GateConfig, {"reference": "refs/"}, "gate")


def test_a_profile_states_its_floors_whole() -> None:
    base = {"gate": {"reference": "d.json", "margin": 0.01, "floors": {"vae": {"acc": 0.8, "delta_vs_classic": 0.04}}}}
    floors = {"vae": {"acc": 0.5}, "gan": {"acc": 0.5}}
    merged = overlay(base, {"gate": {"margin": 0.02, "floors": floors}})
    assert merged["gate"] == {"reference": "d.json", "margin": 0.02, "floors": floors}


def test_each_profile_has_its_own_reference_and_floors() -> None:
    default = section(load_params(ROOT / "params.yaml"), GateConfig, "gate")
    smoke = section(profile_params(ROOT / "params.yaml", "smoke"), GateConfig, "gate")
    assert (default.reference, smoke.reference) == ("references/default.json", "references/smoke.json")
    # The smoke profile states its floors whole: after 150 steps vae is below classic, so no vae-vs-classic floor.
    assert "delta_20way_vs_classic" in default.floors["vae"]
    assert "delta_20way_vs_classic" not in smoke.floors["vae"]
    for cfg in (default, smoke):
        assert (ROOT / cfg.reference).is_file(), f"{cfg.reference}: commit it (`make reference`)"


# ---------------------------------------------------------------------------- the CLI, for real


def gate(tmp_path: Path, metrics: object, *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m stages.gate` from the project root on `metrics` (written to a file unless it is a path)."""
    path = metrics if isinstance(metrics, Path) else tmp_path / "metrics.json"
    if not isinstance(metrics, Path):
        path.write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    return subprocess.run([sys.executable, "-m", "stages.gate", "--metrics", str(path), *extra], cwd=ROOT,
                          capture_output=True, text=True)


@pytest.fixture
def committed() -> dict[str, dict[str, float]]:
    return json.loads((ROOT / "references" / "default.json").read_text())


def test_committed_metrics_pass_the_gate(tmp_path: Path) -> None:
    result = gate(tmp_path, ROOT / "reports" / "metrics.json", "--report", str(tmp_path / "report.md"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-2].startswith("gate: PASS")
    assert "Gate: **PASS**" in (tmp_path / "report.md").read_text()


def test_a_ten_point_drop_of_an_augmented_variant_fails_and_is_named(tmp_path: Path, committed: dict) -> None:
    degraded = copy.deepcopy(committed)
    was = committed["vae"]["acc_20way"]
    degraded["vae"]["acc_20way"] = round(was - 0.10, 5)
    result = gate(tmp_path, degraded, "--report", str(tmp_path / "report.md"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAIL: vae acc_20way fell 0.100 ({was:.3f} -> {was - 0.10:.3f}; tolerance 0.020)" in result.stdout
    assert "gate: FAIL" in result.stdout
    report = (tmp_path / "report.md").read_text()
    assert "Gate: **FAIL**" in report and "- FAIL: vae acc_20way fell 0.100" in report


def test_episode_noise_within_the_tolerance_passes(tmp_path: Path, committed: dict) -> None:
    rng = np.random.default_rng(0)
    noisy = copy.deepcopy(committed)
    for m in noisy.values():
        for key in [k for k in m if k.startswith(("acc_", "delta_")) and not k.endswith("_ci95")]:
            m[key] = round(m[key] + float(rng.uniform(-0.015, 0.015)), 5)  # tolerance here is >= 0.020
    assert noisy != committed
    result = gate(tmp_path, noisy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


def test_a_floor_fails_even_when_the_reference_agrees(tmp_path: Path, committed: dict) -> None:
    params = load_params(ROOT / "params.yaml")
    params["gate"]["floors"]["vae"]["acc_20way"] = 0.9
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # YAML reads JSON
    result = gate(tmp_path, committed, "--params", str(tmp_path / "params.yaml"))
    assert result.returncode == 1
    assert f"FAIL: vae acc_20way = {committed['vae']['acc_20way']:.3f} is below its floor 0.900" in result.stdout


def test_a_variant_missing_from_the_run_fails_a_new_one_is_reported(tmp_path: Path, committed: dict) -> None:
    shrunk = {v: m for v, m in committed.items() if v != "classic"}
    result = gate(tmp_path, shrunk)
    assert result.returncode == 1
    assert "FAIL: classic acc_20way is in references/default.json but not in" in result.stdout
    assert "FAIL: classic acc_20way has a floor" in result.stdout

    grown = {**committed, "diffusion": dict(committed["vae"])}
    result = gate(tmp_path, grown)
    assert result.returncode == 0, result.stdout
    row = [line for line in result.stdout.splitlines()
           if [c.strip() for c in line.split("|")[1:3]] == ["diffusion", "acc_20way"]]
    assert row and [c.strip() for c in row[0].split("|")[3:8]] == [
        "-", f"{committed['vae']['acc_20way']:.3f}", "-", "-", "new"], row
    assert "new, not in the reference yet: diffusion" in result.stdout


def test_a_malformed_metrics_file_is_a_clear_error(tmp_path: Path) -> None:
    result = gate(tmp_path, '{"vae": {"acc_20way": 0.8,}}')
    assert result.returncode == 2
    assert f"gate: error: {tmp_path / 'metrics.json'}: not valid JSON" in result.stderr
    assert "`git checkout -- reports/metrics.json`" in result.stderr and "Traceback" not in result.stderr
    result = gate(tmp_path, tmp_path / "absent.json")
    assert result.returncode == 2 and "absent.json: not found; regenerate it" in result.stderr


def test_write_reference_makes_the_run_the_reference(tmp_path: Path, committed: dict) -> None:
    params = load_params(ROOT / "params.yaml")
    params["gate"]["reference"] = str(tmp_path / "refs" / "mine.json")
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    result = gate(tmp_path, committed, "--params", str(tmp_path / "params.yaml"))
    assert result.returncode == 2 and "mine.json: not found; create it from a run you trust" in result.stderr
    lower = copy.deepcopy(committed)
    lower["vae"]["acc_20way"] -= 0.03  # beyond the tolerance, above the floor
    assert gate(tmp_path, lower).returncode == 1
    assert gate(tmp_path, lower, "--params", str(tmp_path / "params.yaml"), "--write-reference").returncode == 0
    assert json.loads((tmp_path / "refs" / "mine.json").read_text()) == lower
    assert gate(tmp_path, lower, "--params", str(tmp_path / "params.yaml")).returncode == 0
