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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig

# MLflow's SQLite store logs every schema migration at INFO on first use; keep the stage output readable.
logging.getLogger("alembic").setLevel(logging.WARNING)
# The classifiers are logged pickled on purpose (see stages/evaluate.py); the warning about it is noise.
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


class TrackingError(RuntimeError):
    """The MLflow tracking server cannot be reached."""


class ModelFilesMissing(ValueError):
    """The store lists the model, but the files it was logged with are gone (its artifact folder was deleted)."""


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


# MLflow retries a failed HTTP request 7 times with doubling waits, minutes in all; a stage whose server has gone
# should say so within about half a minute, which still rides out a server restart. Set them to override.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}


def quiet_downloads() -> None:
    """No progress bar for MLflow's artifact downloads (a bar per copy of a model's few files), unless asked."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def setup(cfg: TrackingConfig) -> str | None:
    """Point MLflow at the tracking store; returns the URI, or None when tracking is off."""
    if not cfg.enabled:
        return None
    import mlflow

    uri = tracking_uri()
    check_reachable(uri)
    quiet_downloads()
    for key, value in HTTP_RETRIES.items():
        os.environ.setdefault(key, value)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id(uri, cfg.experiment))
    end_orphaned_runs(uri, cfg.experiment)
    return uri


def artifact_root(uri: str) -> Path | None:
    """Where new experiments of a local SQLite store keep their artifacts: `mlruns/` beside the database.

    MLflow's own default is `./mlruns` in whatever folder the experiment's first run starts in: a quick
    profile's build/<profile>, or a temporary copy of `dvc exp run`, both deleted later under a store that
    outlives them. Other stores (a server, which proxies its artifacts) decide for themselves: None."""
    if not uri.startswith("sqlite:///"):
        return None
    database = uri.removeprefix("sqlite:///").partition("?")[0]
    return None if database in ("", ":memory:") else Path(database).resolve().parent / "mlruns"


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment `name` in the store at `uri`, created when missing (with its artifacts at
    `artifact_root(uri)/<name>` in a SQLite store). Safe against another process creating it meanwhile."""
    import re

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    root = artifact_root(uri)
    location = (root / re.sub(r"[^A-Za-z0-9._-]+", "-", name)).as_uri() if root else None
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        made = client.get_experiment_by_name(name)  # another process made it first
        if made is None:
            raise
        return str(made.experiment_id)


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


HEADLINE_VIEW = "headline"  # the share key of the runs table that shows the headline columns


def share_view(client: Any, experiment_id: str, metrics: list[str], tags: list[str],
               key: str = HEADLINE_VIEW) -> str:
    """Save a view of the experiment's runs table that shows `metrics` and `tags` as columns, as the MLflow UI's
    own "share view" does (an experiment tag `mlflow.sharedViewState.<key>` holding the view's state), so a
    user sees the headline without picking columns among a hundred. Returns the view's path in the UI."""
    import json

    columns = ["attributes.`Run Name`", *(f"metrics.`{m}`" for m in metrics), *(f"tags.`{t}`" for t in tags)]
    state = {"orderByKey": "attributes.start_time", "orderByAsc": False, "selectedColumns": columns}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(state))
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={key}"


def log_dataset(client: Any, run_id: str, data: str | Path, context: str) -> None:
    """Record the prepared data `data` (dataset.npz, its manifest.json beside it) as the run's MLflow dataset input:
    named after its source (`omniglot`, `folder:kanji`), the digest the manifest's hash (source checksums,
    split and image spec: it changes when any does), the source the user's data folder. `context`:
    `training` or `evaluation`."""
    import hashlib
    import json

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]  # made at import
    from mlflow.entities import DatasetInput, InputTag

    manifest_path = Path(data).parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    name = manifest.get("source", "dataset") + (f":{manifest['subdir']}" if manifest.get("subdir") else "")
    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()[:16]
    dataset = MetaDataset(LocalArtifactDatasetSource(str(manifest.get("path", data))), name=name,  # type: ignore[abstract]
                          digest=digest)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                     [InputTag("mlflow.data.context", context)])])


def is_model_uri(spec: str) -> bool:
    """An MLflow model URI (`runs:/<run id>/<variant>`, `models:/<name>/<version>`, `models:/<name>@<alias>`),
    not a file path."""
    return spec.startswith(("runs:/", "models:/"))


def load_logged_model(uri: str, read_checkpoint: Callable[[Path], tuple[Any, dict[str, Any]]]
                      ) -> tuple[Any, dict[str, Any]]:
    """The network logged at an MLflow `uri`, and the metadata it was logged with.

    A model the evaluate stage logged (`serving.log_model`: a pyfunc carrying the checkpoint) gives
    `read_checkpoint(<its model.safetensors>)` (network, extra); a PyTorch model (`mlflow.pytorch`) gives
    what was pickled. The store is `tracking_uri()`: MLFLOW_TRACKING_URI, else the project's mlflow.db.
    A URI the store does not know, or a model of neither kind, is a ValueError naming it; a model the store
    lists whose files are gone is a `ModelFilesMissing` (a ValueError).
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    store = tracking_uri()
    check_reachable(store)
    quiet_downloads()
    with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=store,
                                                        registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or store)
            if not (Path(local) / "MLmodel").is_file():  # a registered version whose run's files were deleted
                raise ModelFilesMissing(
                    f"{uri}: the MLflow store {store} lists this model, but its files are gone (was the artifact "
                    "folder of its run deleted?); log it again with `stages/evaluate.py`")
            logged = Model.load(local)
            metadata = logged.metadata or {}
            checkpoint = Path(local) / "artifacts" / "model.safetensors"
            if "pytorch" in logged.flavors:
                model = mlflow.pytorch.load_model(local, map_location="cpu")
            elif checkpoint.is_file():
                model, extra = read_checkpoint(checkpoint)
                metadata = {**extra, **metadata}
            else:
                raise ValueError(f"{uri}: an MLflow model with flavours {', '.join(logged.flavors)}, not a network "
                                 "of this pipeline (log one with `stages/evaluate.py`)")
        except (MlflowException, OSError) as exc:
            raise ValueError(f"{uri}: not a model of this pipeline in the MLflow store {store} ({exc})") from exc
    return model, metadata
