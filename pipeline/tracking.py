"""Where MLflow runs go, how they are tagged, and reading a logged model back.

The default store is `sqlite:///<repo root>/mlflow.db` with an absolute path: DVC sets
`DVC_ROOT` to the root of the user's repository even for queued `dvc exp run` copies, so every
run of every experiment lands in the same store. `MLFLOW_TRACKING_URI` overrides it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig

# MLflow's SQLite store logs every schema migration at INFO on first use; keep the stage output readable.
logging.getLogger("alembic").setLevel(logging.WARNING)
# The classifiers are logged pickled on purpose (see stages/evaluate.py); the warning about it is noise.
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


class TrackingError(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def project_root(start: Path | None = None) -> Path:
    """The user's repository root: `DVC_ROOT` when DVC runs the stage, else the folder holding dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with the fix, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # it answered; MLflow itself reports anything else
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({getattr(exc, 'reason', exc)}); "
            "start it (`mlflow server --host 127.0.0.1 --port 5000`) or unset MLFLOW_TRACKING_URI "
            "to log to the local mlflow.db"
        ) from exc


def setup(cfg: TrackingConfig) -> str | None:
    """Point MLflow at the tracking store; returns the URI, or None when tracking is off."""
    if not cfg.enabled:
        return None
    import mlflow

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(cfg.experiment)
    end_orphaned_runs(uri, cfg.experiment)
    return uri


def process_id(pid: int | None = None) -> str:
    """`host:pid:start`: names a process uniquely on its machine (a pid alone is reused)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_started(pid)}"


def _started(pid: int) -> str:
    try:  # field 22 of /proc/<pid>/stat, after the parenthesised command name: start time in clock ticks
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def end_orphaned_runs(uri: str, experiment: str) -> list[str]:
    """End KILLED the RUNNING runs of `experiment` whose process, on this machine, is gone (a kill -9, a
    power cut): no run stays RUNNING for ever. Runs of other machines, or without the tag, are left alone."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    host = socket.gethostname()
    ended = []
    for run in client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        owner = run.data.tags.get("process", "")
        name, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if name == host and pid.isdigit() and process_id(int(pid)) != owner:
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    if ended:
        print(f"MLflow: ended {len(ended)} run(s) KILLED whose process had died: {', '.join(ended)}")
    return ended


def git_commit() -> str:
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_tags(**extra: str | None) -> dict[str, str]:
    """Tags every run carries: git commit, DVC experiment name and the process that logs it, plus `extra`."""
    tags = {"git_commit": git_commit(), "dvc_exp": os.environ.get("DVC_EXP_NAME", ""), "process": process_id()}
    tags.update({k: v for k, v in extra.items() if v is not None})
    return tags


def adopt_run(client: Any, run_info: dict[str, Any], uri: str, parent_id: str, group: str) -> bool:
    """Nest a stage's training run (`run_info`: its run.json) under `parent_id`, a run of the pipeline run
    `group`, so that the pipeline run shows its whole story in one tree. A run keeps the first parent it got:
    a model that DVC reuses in a later pipeline run stays under the run that trained it (the later one's
    variant run names it in `training_run_id`), unless that parent ended FAILED or KILLED or was deleted (a
    pipeline run whose logging failed): the next pipeline run takes it over. Runs in another store, or none,
    are left alone.
    True when the run was nested now."""
    run_id = run_info.get("mlflow_run_id")
    if not run_id or run_info.get("tracking_uri") != uri:
        return False
    run = client.get_run(run_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent is not None and _alive(client, parent):
        return False
    client.set_tag(run_id, "mlflow.parentRunId", parent_id)
    client.set_tag(run_id, "run_group", group)
    return True


def _alive(client: Any, run_id: str) -> bool:
    """The run exists, is not deleted, and did not end FAILED or KILLED."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage != "deleted" and run.info.status not in ("FAILED", "KILLED")


def is_model_uri(spec: str) -> bool:
    """An MLflow model URI (`runs:/<run id>/model`, `models:/<name>/<version>`), not a file path."""
    return spec.startswith(("runs:/", "models:/"))


def load_logged_model(uri: str) -> tuple[Any, dict[str, Any]]:
    """The PyTorch model logged at an MLflow `uri`, and the metadata it was logged with.

    The store is `tracking_uri()`: MLFLOW_TRACKING_URI, else the project's mlflow.db. A URI the
    store does not know, or one that is not a PyTorch model, is a ValueError naming it.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    store = tracking_uri()
    check_reachable(store)
    with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=store,
                                                        registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or store)
            metadata = Model.load(local).metadata or {}
            model = mlflow.pytorch.load_model(local, map_location="cpu")
        except (MlflowException, OSError) as exc:
            raise ValueError(f"{uri}: not a PyTorch model in the MLflow store {store} ({exc})") from exc
    return model, metadata
