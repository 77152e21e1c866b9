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
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.profile import make_workspace

ROOT = Path(__file__).resolve().parents[1]


def workspace(profile: str, dest: Path, keep: bool = False) -> Path:
    """The profile's workspace at `dest`: made fresh, or reused when `keep` and it exists (its run cache too)."""
    if not (keep and (dest / "dvc.yaml").is_file()):
        make_workspace(ROOT, dest, profile)
    return dest


def environment() -> dict[str, str]:
    """The environment of the experiments: this interpreter's tools first on PATH, and the project's
    MLflow store unless MLFLOW_TRACKING_URI names another."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    return env


def run_experiment(ws: Path, name: str, settings: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """`dvc exp run -n name -S key=value ...` in `ws`; then {"metrics": reports/metrics.json,
    "manifest": data/prepared/manifest.json} of the run (the workspace holds its results after it)."""
    cmd = [str(Path(sys.executable).parent / "dvc"), "exp", "run", "-n", name]
    for key, value in settings.items():
        cmd += ["-S", f"{key}={value}"]
    print(f"== {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=ws, env=env).returncode != 0:
        raise SystemExit(f"{ws}: experiment {name} ({', '.join(f'{k}={v}' for k, v in settings.items())}) failed; "
                         "its output is above")
    return {"metrics": json.loads((ws / "reports" / "metrics.json").read_text()),
            "manifest": json.loads((ws / "data" / "prepared" / "manifest.json").read_text())}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max of one figure over runs."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": len(v)}
