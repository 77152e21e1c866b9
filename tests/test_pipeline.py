"""The whole pipeline: `dvc repro` of the smoke profile in a fresh git repo, on the real Omniglot zips,
then the metrics file, DVC's view of it, and the runs read back from the MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.profile import make_workspace

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROTOCOLS = ("acc_20way", "acc_5way", "acc_20way_within", "acc_seen")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, omniglot_dir: Path) -> tuple[Path, dict[str, str]]:
    workspace = make_workspace(ROOT, tmp_path_factory.mktemp("smoke") / "project", "smoke")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env.update(OMNIGLOT_DIR=str(omniglot_dir), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    run([str(BIN / "dvc"), "repro"], workspace, env)
    return workspace, env


@pytest.mark.slow
def test_repro_writes_metrics_for_every_variant(smoke_run: tuple[Path, dict[str, str]]) -> None:
    workspace, _ = smoke_run
    metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
    assert list(metrics) == ["baseline", "classic", "vae", "oracle"]
    for variant, m in metrics.items():
        for key in PROTOCOLS:
            assert 0.0 <= m[key] <= 1.0, (variant, key, m[key])
            assert 0.0 < m[f"{key}_ci95"] < 0.5
        if variant == "baseline":
            assert "delta_20way_vs_baseline" not in m
        else:
            assert m["delta_20way_vs_baseline"] == pytest.approx(m["acc_20way"] - metrics["baseline"]["acc_20way"],
                                                                 abs=2e-5)
            assert m["delta_20way_vs_baseline_ci95"] > 0
    # Chance is 1/20; even the quick profile's classifiers are far above it.
    assert min(m["acc_20way"] for m in metrics.values()) > 0.15
    assert 0.0 <= metrics["vae"]["synthetic_class_consistency"] <= 1.0
    for picture in ("samples_vae.png", "curves.png", "accuracy.png"):
        assert (workspace / "reports" / picture).stat().st_size > 1000
    for table in ("curves.csv", "accuracy.csv"):
        assert (workspace / "reports" / "plots" / table).stat().st_size > 100


@pytest.mark.slow
def test_the_quick_profile_passes_its_gate(smoke_run: tuple[Path, dict[str, str]]) -> None:
    """The run against the committed references/smoke.json and the smoke floors, as `make gate` does it."""
    workspace, env = smoke_run
    report = workspace / "reports" / "report.md"
    result = subprocess.run([sys.executable, "-m", "stages.gate", "--profile", "smoke", "--metrics",
                             str(workspace / "reports" / "metrics.json"), "--report", str(report)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Gate: **PASS** against `references/smoke.json`" in report.read_text()
    shown = run([str(BIN / "dvc"), "plots", "show", "--json"], workspace, env).stdout
    assert not json.loads(shown).get("errors"), shown[:2000]


@pytest.mark.slow
def test_dvc_sees_metrics_and_reruns_only_what_changed(smoke_run: tuple[Path, dict[str, str]]) -> None:
    workspace, env = smoke_run
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], workspace, env).stdout)
    assert any("reports/metrics.json" in str(v) for v in json.dumps(shown).split(","))
    status = run([str(BIN / "dvc"), "status", "--json"], workspace, env)
    assert json.loads(status.stdout) == {}, status.stdout

    params = (workspace / "params.yaml").read_text()
    try:
        (workspace / "params.yaml").write_text(params.replace("n_per_exemplar: 8", "n_per_exemplar: 4"))
        changed = set(json.loads(run([str(BIN / "dvc"), "status", "--json"], workspace, env).stdout))
    finally:
        (workspace / "params.yaml").write_text(params)
    assert "synthesize@vae" in changed
    assert not any(s.startswith(("prepare", "train_generator", "train_classifier@baseline")) for s in changed)


@pytest.mark.slow
def test_mlflow_holds_one_pipeline_run_with_a_child_per_variant(smoke_run: tuple[Path, dict[str, str]]) -> None:
    workspace, _ = smoke_run
    store = workspace / "mlflow.db"
    assert store.is_file(), "the default tracking store is mlflow.db at the repository root"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("omniglot-oneshot-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_kind: dict[str, list] = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("kind", ""), []).append(r)
        assert r.info.status == "FINISHED"
    (parent,) = by_kind["pipeline"]
    children = {r.data.tags["variant"]: r for r in by_kind["variant"]}
    assert set(children) == {"baseline", "classic", "vae", "oracle"}
    metrics = json.loads((workspace / "reports" / "metrics.json").read_text())
    for variant, r in children.items():
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["run_group"] == parent.info.run_id
        assert len(r.data.tags["git_commit"]) == 40
        assert r.data.metrics["acc_20way"] == pytest.approx(metrics[variant]["acc_20way"])
        assert r.data.params["siamese.loss"]
        assert len(client.get_metric_history(r.info.run_id, "train/loss")) > 3, "learning curve"
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "history" in artifacts
    assert children["oracle"].data.tags["ceiling"] == "true"
    assert children["vae"].data.tags["generator"] == "vae"
    assert "samples_vae.png" in {a.path for a in client.list_artifacts(children["vae"].info.run_id)}
    assert {r.data.tags["variant"] for r in by_kind["training"]} == set(children)
    (gen,) = by_kind["generator"]
    assert len(client.get_metric_history(gen.info.run_id, "train/loss")) > 3


@pytest.mark.slow
def test_temporary_dvc_experiment_logs_into_the_workspace_store(smoke_run: tuple[Path, dict[str, str]]) -> None:
    """`dvc exp run --temp` runs in a copy under .dvc/tmp; its runs must still land in <repo root>/mlflow.db."""
    workspace, env = smoke_run
    run([str(BIN / "dvc"), "exp", "run", "--temp", "-n", "fewer-episodes", "-S", "evaluation.n_episodes=50"],
        workspace, env)
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("omniglot-oneshot-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_exp = 'fewer-episodes'")
    kinds = sorted(r.data.tags["kind"] for r in runs)
    # Only the evaluate stage reran: one pipeline run and its four variant runs, no retraining.
    assert kinds == ["pipeline"] + ["variant"] * 4, kinds
    assert not list(workspace.glob(".dvc/tmp/exps/**/mlflow.db"))
