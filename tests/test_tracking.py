"""MLflow tracking: where runs go, failing fast on a dead server, a round trip through a live one, and
runs that end FAILED when their code raises. Every store is real (SQLite in tmp_path or `mlflow server`)."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import mlflow
import pytest
import pytorch_lightning as pl
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking import fluent as mlflow_fluent
from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils
from pytorch_lightning.loggers import MLFlowLogger

from pipeline import lifecycle, tracking
from pipeline.config import TrackingConfig
from pipeline.server import free_port

REPO = Path(__file__).resolve().parents[1]
# Read by tracking.py or MLflow, or exported by mlflow.set_tracking_uri / set_experiment; git's own
# variables would point `git rev-parse` at some other repository.
ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME",
            "DVC_EXP_BASELINE_REV", "GIT_DIR", "GIT_WORK_TREE")


@pytest.fixture(autouse=True)
def clean_tracking_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no tracking variables or MLflow globals set, and leaves none behind.

    mlflow.set_tracking_uri and set_experiment write module globals and export MLFLOW_TRACKING_URI and
    MLFLOW_EXPERIMENT_ID into os.environ; monkeypatch records each (set, then delete, so an originally
    unset variable is recorded too) and restores it after the test.
    """
    for var in ENV_VARS:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setattr(mlflow_tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(mlflow_fluent, "_active_experiment_id", None)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="module")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its schema made: making one takes seconds, copying one does not."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_root(tmp_path: Path, migrated_store: Path) -> Path:
    """tmp_path holding a copy of the empty store as mlflow.db: the default store when DVC_ROOT is tmp_path."""
    shutil.copy(migrated_store, tmp_path / "mlflow.db")
    return tmp_path



# --- where runs go --------------------------------------------------------------------------------------------


def test_tracking_uri_env_var_is_returned_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker.example:5000/")
    monkeypatch.setenv("DVC_ROOT", "/some/abs/path")  # the explicit URI wins over the default store
    assert tracking.tracking_uri() == "http://tracker.example:5000/"


def test_tracking_uri_defaults_to_sqlite_under_dvc_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_ROOT", "/some/abs/path")
    assert tracking.tracking_uri() == "sqlite:////some/abs/path/mlflow.db"  # four slashes: an absolute path


def test_tracking_uri_finds_the_folder_holding_dvc_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "stages" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "stages" / "deep")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


# --- failing fast on an unreachable server -------------------------------------------------------------------


def test_setup_fails_fast_with_the_fix_on_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError) as err:
        tracking.setup(TrackingConfig())
    assert time.monotonic() - start < 10  # MLflow's own client would retry for minutes
    message = str(err.value)
    assert uri in message
    assert "mlflow server" in message and "unset MLFLOW_TRACKING_URI" in message


def test_a_refused_mlflow_request_is_told_from_other_failures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """MLflow's own client, giving up on a loopback port nobody listens on, is recognised as a lost server (by the
    requests error in the exception chain); an error of the stage's own is not."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MlflowException) as refused:
        client.log_metric("0" * 32, "acc_20way", 0.5)
    assert lifecycle.lost_server(refused.value) == "connection refused"
    with pytest.raises(MlflowException) as other:
        MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run("0" * 32)
    assert lifecycle.lost_server(other.value) == ""
    assert lifecycle.lost_server(ValueError("API request to nowhere: Connection refused")) == ""


def test_check_reachable_times_out_on_a_server_that_never_answers() -> None:
    with socket.socket() as listener:  # the kernel accepts the connection; nobody ever reads or replies
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(tracking.TrackingError, match="unreachable"):
            tracking.check_reachable(uri, timeout=0.5)
        assert time.monotonic() - start < 5


class _NoHealthEndpoint(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 404, like a server that is up but is not MLflow's /health."""

    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_check_reachable_accepts_a_server_that_answers_with_an_http_error() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _NoHealthEndpoint)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        tracking.check_reachable(f"http://127.0.0.1:{server.server_address[1]}/")  # no raise: it answered
    finally:
        server.shutdown()
        server.server_close()


def test_check_reachable_does_not_probe_local_stores() -> None:
    tracking.check_reachable("sqlite:////nonexistent/folder/mlflow.db")
    tracking.check_reachable("file:///nonexistent/mlruns")


def test_setup_disabled_returns_none_and_touches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    assert tracking.setup(TrackingConfig(enabled=False)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml"]  # no mlflow.db created
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert mlflow_tracking_utils._tracking_uri is None and mlflow_fluent._active_experiment_id is None

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert tracking.setup(TrackingConfig(enabled=False)) is None  # a dead server is not even probed


# --- a real `mlflow server` on loopback ----------------------------------------------------------------------


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (the CLI and its uvicorn worker), SIGKILL whatever outlives it."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port, with its own SQLite store; yields its URL."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    shutil.copy(migrated_store, folder / "srv.db")  # the server would otherwise spend seconds making the schema
    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner to start and stop
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'srv.db'}",
           "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1",
           "--port", url.rsplit(":", 1)[1], "--workers", "1"]
    log_path = folder / "server.log"
    with log_path.open("wb") as log:  # a file, not a pipe, which the server could fill and block on
        # Its own session, so that one signal reaches the uvicorn worker it spawns too.
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer {url}/health within 60 s:\n"
                            f"{log_path.read_text()[-5000:]}")
            time.sleep(0.2)
        yield url
    finally:
        _stop_server(proc)


def test_runs_round_trip_through_a_live_server(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert tracking.setup(TrackingConfig(experiment="server-test")) == mlflow_server
    with mlflow.start_run(run_name="round trip", tags=tracking.run_tags(kind="test")) as run:
        mlflow.log_metric("val/acc", 0.75, step=3)

    client = MlflowClient(tracking_uri=mlflow_server)
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.metrics == {"val/acc": 0.75}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/acc")] == [(3, 0.75)]
    assert stored.data.tags["kind"] == "test" and "git_commit" in stored.data.tags
    assert client.get_experiment(stored.info.experiment_id).name == "server-test"


# --- failing code ends its run FAILED ------------------------------------------------------------------------


def test_run_that_raises_ends_failed_in_the_default_store(store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_ROOT", str(store_root))
    uri = tracking.setup(TrackingConfig(experiment="fail-test"))
    assert uri == f"sqlite:///{store_root.resolve()}/mlflow.db"
    with pytest.raises(RuntimeError, match="boom"), mlflow.start_run(tags=tracking.run_tags(kind="test")) as run:
        mlflow.log_metric("acc", 0.5)
        raise RuntimeError("boom")
    stored = MlflowClient(tracking_uri=uri).get_run(run.info.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.metrics == {"acc": 0.5}  # what was logged before the failure is kept


def test_artifacts_live_beside_the_sqlite_store_not_where_the_first_run_started(
        store_root: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quick profile's build/<profile>, or a `dvc exp run` temporary copy, logs to a store that outlives it: the
    experiment it creates keeps its artifacts in mlruns/ beside the store, so deleting the workspace loses none."""
    workspace = tmp_path_factory.mktemp("workspace")  # elsewhere: the run starts here and logs to store_root's store
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_root}/mlflow.db")
    uri = tracking.setup(TrackingConfig(experiment="team/smoke run"))
    with mlflow.start_run() as run:
        mlflow.log_text("kept", "note.txt")
    monkeypatch.chdir(store_root)
    shutil.rmtree(workspace)
    client = MlflowClient(uri)
    location = client.get_experiment_by_name("team/smoke run").artifact_location
    assert location == (store_root.resolve() / "mlruns" / "team-smoke-run").as_uri()
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "kept"
    # Found, not made again, by the next stage and by an analysis logging through its own client; an experiment
    # made before (by MLflow itself, wherever it was) keeps its location.
    assert tracking.experiment_id(uri, "team/smoke run") == run.info.experiment_id
    older = client.create_experiment("older", artifact_location=(workspace / "old").as_uri())
    assert tracking.experiment_id(uri, "older") == older
    assert tracking.artifact_root("http://127.0.0.1:5000") is None
    assert tracking.artifact_root("sqlite:///:memory:") is None


def test_failing_variant_run_fails_itself_and_its_parent(store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluate stage's layout: a parent run per pipeline run, a nested run per variant."""
    monkeypatch.setenv("DVC_ROOT", str(store_root))
    uri = tracking.setup(TrackingConfig(experiment="fail-test"))
    with pytest.raises(RuntimeError, match="variant broke"), mlflow.start_run(run_name="pipeline") as parent:
        with mlflow.start_run(run_name="baseline", nested=True) as done:
            mlflow.log_metric("acc", 0.5)
        with mlflow.start_run(run_name="vae", nested=True) as broken:
            raise RuntimeError("variant broke")
    client = MlflowClient(tracking_uri=uri)
    status = {run.info.run_name: client.get_run(run.info.run_id).info.status for run in (parent, done, broken)}
    assert status == {"pipeline": "FAILED", "baseline": "FINISHED", "vae": "FAILED"}
    assert mlflow.active_run() is None


def test_a_training_run_under_a_failed_pipeline_run_is_taken_over_by_the_next(store_root: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate nests each training run under its pipeline run; one whose logging failed gives them up."""
    monkeypatch.setenv("DVC_ROOT", str(store_root))
    uri = tracking.setup(TrackingConfig(experiment="adopt-test"))
    client = MlflowClient(tracking_uri=uri)
    with mlflow.start_run(run_name="train:vae") as training:
        pass
    info = {"mlflow_run_id": training.info.run_id, "tracking_uri": uri}

    def parent_of() -> str:
        return client.get_run(training.info.run_id).data.tags["mlflow.parentRunId"]

    with pytest.raises(RuntimeError, match="logging broke"), mlflow.start_run(run_name="pipeline 1") as first:
        assert tracking.adopt_run(client, info, uri, first.info.run_id, first.info.run_id)
        raise RuntimeError("logging broke")
    assert client.get_run(first.info.run_id).info.status == "FAILED" and parent_of() == first.info.run_id
    with mlflow.start_run(run_name="pipeline 2") as second:
        assert tracking.adopt_run(client, info, uri, second.info.run_id, second.info.run_id)
    assert parent_of() == second.info.run_id
    with mlflow.start_run(run_name="pipeline 3") as third:  # a later run reusing the model: it stays where it is
        assert not tracking.adopt_run(client, info, uri, third.info.run_id, third.info.run_id)
    assert parent_of() == second.info.run_id
    assert not tracking.adopt_run(client, {**info, "tracking_uri": "sqlite:///elsewhere.db"}, uri, "x", "x")


class _LinearModule(pl.LightningModule):
    """A linear regression whose training_step raises at batch `fail_at` (never when None)."""

    def __init__(self, fail_at: int | None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.fail_at = fail_at

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if batch_idx == self.fail_at:
            raise RuntimeError(f"training_step failed at batch {batch_idx}")
        x, y = batch  # (2, 4), (2, 1)
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("fail_at", "status"), [(2, "FAILED"), (None, "FINISHED")])
def test_lightning_mlflow_logger_ends_the_run_with_the_training_outcome(
        store_root: Path, fail_at: int | None, status: str) -> None:
    """How the training stages log: Lightning's MLFlowLogger, which must not leave a crashed run RUNNING."""
    uri = f"sqlite:///{store_root / 'mlflow.db'}"
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 4, generator=generator),
                                          torch.randn(8, 1, generator=generator))
    loader = torch.utils.data.DataLoader(data, batch_size=2)  # 4 batches an epoch
    logger = MLFlowLogger(experiment_name="lightning-test", tracking_uri=uri, run_name="train:test",
                          tags=tracking.run_tags(kind="training"))
    trainer = pl.Trainer(max_steps=5, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1, accelerator="cpu",
                         default_root_dir=store_root)
    if fail_at is None:
        trainer.fit(_LinearModule(fail_at), loader)
    else:
        with pytest.raises(RuntimeError, match=f"failed at batch {fail_at}"):
            trainer.fit(_LinearModule(fail_at), loader)

    stored = MlflowClient(tracking_uri=uri).get_run(logger.run_id)
    assert stored.info.status == status
    assert stored.data.tags["kind"] == "training"
    steps = [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(logger.run_id, "train/loss")]
    assert steps == ([0, 1] if fail_at == 2 else [0, 1, 2, 3, 4])  # the steps before the crash are kept


# --- run tags -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_run_tags_in_the_git_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1a2b3")
    tags = tracking.run_tags(kind="variant", variant="vae", training_run_id=None)  # type: ignore[arg-type]
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"]), tags["git_commit"]
    assert tags == {"git_commit": tags["git_commit"], "dvc_exp": "exp-1a2b3", "kind": "variant", "variant": "vae",
                    "process": tracking.process_id()}
    host, pid, started = tags["process"].split(":")
    assert host == socket.gethostname() and int(pid) == os.getpid() and started.isdigit()


def test_run_tags_outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # never find a repository above tmp_path
    assert tracking.run_tags() == {"git_commit": "unknown", "dvc_exp": "", "process": tracking.process_id()}


def test_git_commit_is_the_dvc_baseline_rev_when_dvc_sets_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # queued `dvc exp run` copies: DVC names the commit, git may know none
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    assert tracking.run_tags(kind="pipeline")["git_commit"] == "a" * 40
