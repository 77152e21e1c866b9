"""The analyses of several pipeline runs: the source-groups sweep (benchmarks/source_groups.py,
profiles/source-sweep.yaml: its counts, the pairs it measures, the rows it writes, and a split in which
only the source classes change with the count) and the split benchmark (benchmarks/splits.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ParamsError, from_dict, section
from pipeline.data.fewshot import FewShotSet
from pipeline.data.prepare import DataConfig, prepare_dataset
from pipeline.profile import profile_params
from pipeline.variants import VariantConfig

ROOT = Path(__file__).resolve().parents[1]


def benchmark(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


source_groups = benchmark("source_groups")
splits = benchmark("splits")


@pytest.mark.parametrize("counts", [[2, 5, 10, 20], [1], [3, 4]])
def test_counts_are_increasing_and_positive(counts: list[int]) -> None:
    assert source_groups.check_counts(counts) == counts


@pytest.mark.parametrize("counts", [[], [0, 5], [5, 2], [2, 2], [-1]])
def test_bad_counts_are_refused_naming_the_flag(counts: list[int]) -> None:
    with pytest.raises(SystemExit, match=r"--counts.*increasing counts of source groups, each at least 1"):
        source_groups.check_counts(counts)


def profile_variants() -> dict[str, VariantConfig]:
    params = profile_params(ROOT / "params.yaml", "source-sweep")
    return {v: section(params, VariantConfig, f"variants.{v}") for v in params["variants"]}


def test_each_generator_variant_is_measured_against_its_control() -> None:
    assert source_groups.gain_pairs(profile_variants()) == [("gan", "classic"), ("src_gan", "src_classic")]
    # The default matrix too: each generator without and with the source classes.
    params = profile_params(ROOT / "params.yaml", "smoke")
    default = {v: section(params, VariantConfig, f"variants.{v}") for v in params["variants"]}
    assert source_groups.gain_pairs(default) == [("vae", "classic"), ("gan", "classic"), ("src_vae", "src_classic"),
                                                 ("src_gan", "src_classic")]


def test_a_generator_variant_without_control_is_refused() -> None:
    variants = {"gan": from_dict(VariantConfig, {"train_on": ["exemplars", "synthetic"], "synthetic": "gan"}, "v")}
    with pytest.raises(SystemExit, match=r"variant 'gan' has no control"):
        source_groups.gain_pairs(variants)


def test_a_row_holds_the_paired_gains_and_the_accuracies_behind_them() -> None:
    metrics = {"classic": {"acc_20way": 0.7, "acc_seen": 0.8},
               "gan": {"acc_20way": 0.75, "acc_seen": 0.86, "delta_20way_vs_classic": 0.05,
                       "delta_20way_vs_classic_ci95": 0.01, "delta_seen_vs_classic": 0.06,
                       "delta_seen_vs_classic_ci95": 0.012}}
    manifest = {"roles": {"source": {"classes": 123}}}
    r = source_groups.row(5, metrics, manifest, [("gan", "classic")])
    assert r["n_source_groups"] == 5 and r["n_source_classes"] == 123
    assert (r["gain_20way_gan"], r["gain_20way_gan_ci95"]) == (0.05, 0.01)
    assert (r["gain_seen_gan"], r["gain_seen_gan_ci95"]) == (0.06, 0.012)
    assert (r["acc_20way_gan"], r["acc_20way_classic"]) == (0.75, 0.7)


def test_the_rest_param_is_checked() -> None:
    assert from_dict(DataConfig, {"rest": "unused"}, "data").rest == "unused"
    with pytest.raises(ParamsError, match=r"`data\.rest` = 'dropped'.*novel .* or unused"):
        from_dict(DataConfig, {"rest": "dropped"}, "data")


def test_only_the_source_classes_change_with_the_count(omniglot_dir: Path) -> None:
    """The profile's rule on the real zips (2 characters per alphabet): 2 and 5 source groups give the same
    calibration, one-shot and novel classes and exemplars; the 2 source groups are among the 5; the
    background alphabets no role takes are `unused`, never novel."""
    data = profile_params(ROOT / "params.yaml", "source-sweep")["data"]
    sets: dict[int, FewShotSet] = {}
    for count in (2, 5):
        raw = {**data, "path": str(omniglot_dir), "max_classes_per_group": 2,
               "roles": {**data["roles"], "source": count}}
        sets[count] = prepare_dataset(from_dict(DataConfig, raw, "data"))[0]
    few, more = sets[2], sets[5]
    for role in ("calibration", "train", "novel"):
        np.testing.assert_array_equal(few.classes(role), more.classes(role), err_msg=role)
    np.testing.assert_array_equal(few.exemplar, more.exemplar)
    assert set(few.classes("source")) < set(more.classes("source"))
    assert len(set(few.class_group[few.classes("source")])) == 2
    assert len(set(more.class_group[more.classes("source")])) == 5
    assert len(set(few.class_group[few.classes("unused")])) == 30 - 2 - 8 - 2
    assert not set(few.class_group[few.classes("novel")]) & set(few.class_group[few.classes("unused")])
    assert len(set(few.class_group[few.classes("novel")])) == 20  # the evaluation alphabets only


# ---------------------------------------------------------------------------- the split benchmark


@pytest.mark.parametrize("seeds", [[0], [], [1, 1, 2], [0, -1]])
def test_bad_seeds_are_refused_naming_the_flag(seeds: list[int]) -> None:
    with pytest.raises(SystemExit, match=r"--seeds.*at least 2 distinct seeds >= 0"):
        splits.check_seeds(seeds)


def test_every_paired_delta_of_a_run_is_collected() -> None:
    metrics = {"baseline": {"acc_20way": 0.4}, "gan": {"acc_20way": 0.8, "delta_20way_vs_baseline": 0.4,
                                                       "delta_20way_vs_baseline_ci95": 0.01}}
    assert splits.deltas(metrics) == {"gan/delta_20way_vs_baseline": 0.4, "gan/delta_20way_vs_baseline_ci95": 0.01}


def test_the_summary_gives_mean_spread_and_how_often_the_ci_clears_zero() -> None:
    frame = pd.DataFrame({"seed": [0, 1, 2], "gan/delta_seen_vs_src_classic": [0.03, -0.01, 0.01],
                          "gan/delta_seen_vs_src_classic_ci95": [0.01, 0.005, 0.02]})
    (r,) = splits.summary(frame).to_dict("records")
    assert (r["variant"], r["delta"]) == ("gan", "delta_seen_vs_src_classic")
    assert r["mean"] == pytest.approx(0.01) and r["std"] == pytest.approx(0.02)
    assert (r["min"], r["max"], r["n"]) == (-0.01, 0.03, 3)
    assert r["ci_above_zero"] == "1/3"  # 0.03 - 0.01 > 0; -0.01 and 0.01 - 0.02 are not
    assert "| gan | delta_seen_vs_src_classic | +0.0100 | 0.0200 | -0.0100 | +0.0300 | 1/3 |" in splits.markdown(
        splits.summary(frame))


# ---------------------------------------------------------------------------- experiments in a real DVC repo

STAGE = """\
stages:
  point:
    cmd: python point.py
    deps: [point.py]
    params: [x]
    outs: [data/prepared/manifest.json]
    metrics: [{reports/metrics.json: {cache: false}}]
"""
POINT = """\
import json, os, yaml
params = yaml.safe_load(open("params.yaml"))
x = params["x"]
os.makedirs("reports", exist_ok=True)
os.makedirs("data/prepared", exist_ok=True)
json.dump({"v": {"acc_20way": x / 10}}, open("reports/metrics.json", "w"))
json.dump({"roles": {"source": {"classes": x}}, "params": params}, open("data/prepared/manifest.json", "w"))
"""


def test_experiments_run_and_a_stopped_analysis_resumes(tmp_path: Path) -> None:
    """Each point a real `dvc exp run`; with reuse, a point already run is applied from DVC, not run again."""
    import subprocess

    from pipeline import experiments

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text("x: 1\nnone: 1\nflag: false\nlist: [0]\n")
    (ws / "dvc.yaml").write_text(STAGE)
    (ws / "point.py").write_text(POINT)
    env = experiments.environment()
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@localhost")
    for cmd in (["git", "init", "-q", "-b", "main"], [experiments.DVC, "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "ws"]):
        subprocess.run(cmd, cwd=ws, env=env, check=True)
    first = experiments.run_experiment(ws, "point-2", {"x": 2}, env)
    assert first["metrics"] == {"v": {"acc_20way": 0.2}} and first["manifest"]["roles"]["source"]["classes"] == 2
    experiments.run_experiment(ws, "point-3", {"x": 3}, env)
    assert experiments.existing(ws, env) == {"point-2", "point-3"}
    again = experiments.run_experiment(ws, "point-2", {"x": 2}, env, reuse=True)  # the workspace held point-3
    assert again == first
    typed = experiments.run_experiment(ws, "point-4", {"x": 4, "none": None, "flag": True, "list": [1, 2]}, env)
    assert typed["manifest"]["params"] == {"x": 4, "none": None, "flag": True, "list": [1, 2]}, "as YAML types"
    with pytest.raises(SystemExit, match=r"experiment point-bad \(x=\[\]\) failed"):
        experiments.run_experiment(ws, "point-bad", {"x": "[]"}, env)  # x / 10 of a list: the stage fails


def test_an_analysis_is_one_mlflow_run_with_its_metrics_per_step_and_its_files(tmp_path: Path) -> None:
    """A real SQLite store: params, a metric at two steps (a NaN CI left out), the files as artifacts."""
    import mlflow

    from pipeline import experiments

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = tmp_path / "points.csv"
    table.write_text("n,gain\n2,0.05\n5,0.07\n")
    before, experiment_before = mlflow.get_tracking_uri(), mlflow.tracking.fluent._active_experiment_id
    run_id = experiments.log_analysis(
        {"MLFLOW_TRACKING_URI": uri}, "analyses", "a sweep", None, {"counts": "2 5"},
        [({"gain": 0.05, "gain_ci95": float("nan")}, 2), ({"gain": 0.07, "gain_ci95": 0.01}, 5)], [table])
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "a sweep"
    assert run.data.tags["kind"] == "analysis" and run.data.tags["profile"] == "default"
    assert run.data.params == {"counts": "2 5"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "gain")] == [(2, 0.05), (5, 0.07)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "gain_ci95")] == [(5, 0.01)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["points.csv"]
    assert client.get_experiment(run.info.experiment_id).name == "analyses"
    # No global MLflow state left behind for the tests and callers after it.
    assert mlflow.get_tracking_uri() == before and mlflow.active_run() is None
    assert mlflow.tracking.fluent._active_experiment_id == experiment_before
