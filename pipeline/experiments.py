"""Analyses made of several pipeline runs: one DVC experiment per setting, in a profile's own workspace.

Used by the analyses users run now and then (benchmarks/source_groups.py, benchmarks/splits.py):
each point is a real `dvc exp run` of the whole pipeline, so `dvc exp show` in the workspace lists
them, DVC's run cache skips what an earlier point already computed, and every run lands in MLflow
as the pipeline's runs do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import tracking
from pipeline.profile import make_workspace

ROOT = Path(__file__).resolve().parents[1]


def workspace(profile: str | None, dest: Path, keep: bool = False) -> Path:
    """The profile's workspace at `dest` (None: params.yaml as it is): made fresh, or reused when `keep` and it
    exists (its run cache too)."""
    if not (keep and (dest / "dvc.yaml").is_file()):
        make_workspace(ROOT, dest, profile)
    return dest


def environment() -> dict[str, str]:
    """The environment of the experiments: this interpreter's tools first on PATH, and the project's
    MLflow store unless MLFLOW_TRACKING_URI names another."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    return env


DVC = str(Path(sys.executable).parent / "dvc")


def existing(ws: Path, env: dict[str, str]) -> set[str]:
    """Names of the experiments already run in `ws` on its current commit."""
    listed = subprocess.run([DVC, "exp", "list", "--name-only"], cwd=ws, env=env, capture_output=True, text=True)
    return set(listed.stdout.split()) if listed.returncode == 0 else set()


def results(ws: Path) -> dict[str, Any]:
    """{"metrics": reports/metrics.json, "manifest": data/prepared/manifest.json} of the workspace."""
    return {"metrics": json.loads((ws / "reports" / "metrics.json").read_text()),
            "manifest": json.loads((ws / "data" / "prepared" / "manifest.json").read_text())}


def run_experiment(ws: Path, name: str, settings: dict[str, Any], env: dict[str, str],
                   reuse: bool = False) -> dict[str, Any]:
    """`dvc exp run -n name -S key=value ...` in `ws`, then the run's `results` (the workspace holds them
    after it). `reuse`: an experiment of that name already run is applied (`dvc exp apply`), not run again,
    so an analysis stopped part-way resumes where it stopped."""
    if reuse and name in existing(ws, env):
        print(f"== dvc exp apply {name} (already run)", flush=True)
        if subprocess.run([DVC, "exp", "apply", name], cwd=ws, env=env).returncode != 0:
            raise SystemExit(f"{ws}: `dvc exp apply {name}` failed; its output is above")
        return results(ws)
    cmd = [DVC, "exp", "run", "-n", name]
    for key, value in settings.items():  # as YAML spells it (null, true, [1, 2]): DVC would read "None" as a string
        cmd += ["-S", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    print(f"== {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=ws, env=env).returncode != 0:
        raise SystemExit(f"{ws}: experiment {name} ({', '.join(f'{k}={v}' for k, v in settings.items())}) failed; "
                         "its output is above")
    return results(ws)


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max of one figure over runs."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": len(v)}


def log_analysis(env: dict[str, str], experiment: str, run_name: str, profile: str | None, params: dict[str, str],
                 metrics: list[tuple[dict[str, float], int | None]], files: list[Path]) -> str:
    """One MLflow run (tag kind=analysis) of an analysis: its params, its metrics (each dict at its step),
    its files as artifacts, in `experiment` of the store the experiments logged to. Returns the run id.

    Through an `MlflowClient` of that store: no global MLflow state (tracking URI, active experiment)
    is left set for the caller. A failure while logging ends the run FAILED, not FINISHED."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment_id = tracking.experiment_id(env["MLFLOW_TRACKING_URI"], experiment)
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={"kind": "analysis", "profile": profile or "default"})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=[
            Metric(k, float(v), now, step or 0) for values, step in metrics for k, v in values.items()
            if v == v])  # NaN: no CI
        for path in files:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
