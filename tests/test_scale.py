"""Beyond one workspace, with the real software on loopback: a DVC remote that a second clone pulls from, DVC's
experiment queue with two workers logging into one MLflow store, and a team's MLflow server on PostgreSQL.
Each runs on a copy of the tiny profile's finished workspace (tests/conftest.py)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.server import free_port
from pipeline.server import query as server_query
from tests.workspaces import episode_folders, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXPERIMENT = "omniglot-oneshot-tiny"  # the tiny profile's MLflow experiment
TRAINED = {"train_classifier@baseline", "train_classifier@classic", "train_classifier@gan"}

pytestmark = pytest.mark.slow


def sh(cmd: list[str], cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def dvc(ws: Path, env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return sh([str(BIN / "dvc"), *args], ws, env, ok)


def ran(done: subprocess.CompletedProcess[str]) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` ran (rather than skipped or restored)."""
    return {line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage")}


def experiments(ws: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json`'s experiments by name: {"state": the queue's verdict (None for one run in the
    workspace), "metrics": {metric file: values}, "params": params.yaml's values}."""
    found = {}
    for row in json.loads(dvc(ws, env, "exp", "show", "--json").stdout):
        for exp in row.get("experiments") or []:
            data = exp["revs"][0].get("data") or {}
            found[exp["name"]] = {"state": (exp.get("executor") or {}).get("state"),
                                  "metrics": {f: v["data"] for f, v in (data.get("metrics") or {}).items()},
                                  "params": (data.get("params") or {}).get("params.yaml", {}).get("data", {})}
    return found


def headline(ws: Path, env: dict[str, str], name: str) -> dict[str, dict[str, float]]:
    """The headline metrics `dvc exp show` lists for the experiment `name`, per metric file."""
    listed = experiments(ws, env)
    assert name in listed, f"{name} not in `dvc exp show`: {sorted(listed)}"
    return listed[name]["metrics"]


def test_a_fresh_clone_pulls_the_run_from_a_remote_and_reruns_nothing(
        tiny_copy: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Push data, models, an experiment and the run cache from one clone; a fresh clone pulls them, `dvc repro`
    there trains nothing and gives the same metrics, the experiment is listed with its figures, and rerunning
    it restores every trained model from the run cache."""
    first, env = tiny_copy
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    sh(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path, env)
    sh(["git", "remote", "add", "origin", str(origin)], first, env)
    dvc(first, env, "remote", "add", "--default", "storage", str(storage))
    sh(["git", "commit", "-q", "-am", "a DVC remote"], first, env)
    sh(["git", "push", "-q", "origin", "main"], first, env)
    dvc(first, env, "push", "--run-cache")
    exp = dvc(first, env, "exp", "run", "-n", "shorter", "-S", "siamese.max_steps=24")
    assert ran(exp) >= TRAINED
    dvc(first, env, "exp", "push", "--run-cache", "origin", "shorter")
    expected = sh(["git", "show", "main:reports/metrics.json"], first, env).stdout

    second = tmp_path / "second"
    sh(["git", "clone", "-q", str(origin), str(second)], tmp_path, env)
    assert not (second / "models").exists()
    dvc(second, env, "pull")
    again = dvc(second, env, "repro")
    # Only the params check runs: its stamp is not cached on purpose (it also reaches the tracking server, and a
    # new machine should); every stage that computes something is up to date with what was pulled.
    assert ran(again) == {"check_params"}, again.stdout
    assert "didn't change, skipping" in again.stdout
    assert (second / "reports/metrics.json").read_text() == expected
    assert dvc(second, env, "status").stdout.strip() == "Data and pipelines are up to date."

    dvc(second, env, "exp", "pull", "--run-cache", "origin", "shorter")
    assert headline(second, env, "shorter") == headline(first, env, "shorter")
    rerun = dvc(second, env, "exp", "run", "-n", "shorter-again", "-S", "siamese.max_steps=24")
    assert not TRAINED & ran(rerun), rerun.stdout  # restored from the pulled run cache, not retrained
    assert all(f"Stage '{s}' is cached - skipping run, checking out outputs" in rerun.stdout for s in TRAINED)
    assert headline(second, env, "shorter-again") == headline(first, env, "shorter")


def test_queued_experiments_run_two_at_a_time_and_each_lands_in_dvc_and_mlflow(
        tiny_copy: tuple[Path, dict[str, str]]) -> None:
    """Four experiments queued with `dvc exp run --queue` and a fifth that diverges, run by `dvc queue start -j 2`
    into the one SQLite store: the four finish and are listed with their own params and metrics, each has its
    pipeline run in MLflow under its name with the same figures, nothing is mixed up, and the failed one shows
    failed in the queue and in MLflow. Prints the queue's wall time beside one experiment's."""
    ws, env = tiny_copy
    start = time.perf_counter()
    dvc(ws, env, "exp", "run", "-n", "alone", "-S", "siamese.max_steps=26")
    alone = time.perf_counter() - start
    steps = {f"steps-{n}": n for n in (21, 22, 23, 24)}
    for name, n in steps.items():
        dvc(ws, env, "exp", "run", "--queue", "-n", name, "-S", f"siamese.max_steps={n}")
    dvc(ws, env, "exp", "run", "--queue", "-n", "diverges", "-S", "siamese.lr=1e6")
    start = time.perf_counter()
    # The workers outlive `dvc queue start`: poll the queue until none is queued or running.
    subprocess.run([str(BIN / "dvc"), "queue", "start", "-j", "2"], cwd=ws, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        status = dvc(ws, env, "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")) or time.perf_counter() - start > 1200:
            break
        time.sleep(3)
    queued = time.perf_counter() - start
    print(f"\nfour tiny-profile experiments (and one that fails at its first training) with `dvc queue start -j 2`: "
          f"{queued:.0f} s; one such experiment alone: {alone:.0f} s; four in a row would take about "
          f"{4 * alone:.0f} s ({4 * alone / queued:.2f}x)")
    rows = {line.split()[1]: line.split()[-1] for line in status.splitlines()[1:] if len(line.split()) >= 4}
    assert {name: rows.get(name) for name in steps} == dict.fromkeys(steps, "Success"), status
    assert rows.get("diverges") == "Failed", status

    listed = experiments(ws, env)
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    for name, n in steps.items():
        assert listed[name]["state"] == "success" and listed[name]["params"]["siamese"]["max_steps"] == n
        pipeline = client.search_runs([experiment.experiment_id], f"tags.dvc_exp = '{name}' and tags.kind = 'pipeline'")
        assert len(pipeline) == 1 and pipeline[0].info.status == "FINISHED", name
        tree = client.search_runs([experiment.experiment_id], f"tags.run_group = '{pipeline[0].info.run_id}'")
        trainings = [r for r in tree if r.data.tags.get("kind") == "training"]
        assert len(trainings) == 3 and all(r.data.params["siamese.max_steps"] == str(n) for r in trainings), name
        for variant, figures in listed[name]["metrics"].items():
            run = [r for r in tree if r.data.tags.get("kind") == "variant"
                   and r.data.tags["variant"] == Path(variant).stem]
            assert len(run) == 1 and run[0].data.metrics["acc_20way"] == pytest.approx(figures["acc_20way"]), name
    failed = client.search_runs([experiment.experiment_id], "tags.dvc_exp = 'diverges'")
    assert [r.info.status for r in failed if r.data.tags.get("kind") == "training"] == ["FAILED"]
    assert not [r for r in failed if r.data.tags.get("kind") == "pipeline"]  # no results, so no pipeline run
    assert listed.get("diverges", {}).get("state") in (None, "failed")


# ---------------------------------------------------------------------------- a team's tracking server

POSTGRES = bool(list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or shutil.which("initdb"))


@pytest.fixture
def team_server(tmp_path: Path) -> Iterator[tuple[str, Path, Callable[[], subprocess.Popen[bytes]]]]:
    """`python -m pipeline.server` (what `make server` runs): PostgreSQL and `mlflow server` with proxied artifacts
    on loopback. Yields the URL, the server's folder, and a function that starts it (again, on the same folder)."""
    # Under /tmp, not pytest's root-only tmp_path: as root, PostgreSQL runs as the `postgres` user, who must reach it.
    folder = Path(tempfile.mkdtemp(prefix="oneshot-team-server-", dir="/tmp"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"server-{len(started)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.server", "--folder", str(folder), "--port",
                                 str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        wait_until_up(url, proc, Path(log.name), 240)
        return proc

    yield url, folder, start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.server
@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL: run .ci/system-packages.sh")
def test_the_quick_profile_logs_everything_to_a_team_server_on_postgresql(
        team_server: tuple[str, Path, Callable[[], subprocess.Popen[bytes]]], tiny_copy: tuple[Path, dict[str, str]],
        tmp_path: Path, omniglot_zips: dict[str, Path]) -> None:
    """The tiny profile run from scratch with MLFLOW_TRACKING_URI pointing at the team server: its runs land in
    PostgreSQL, its pictures and models in the server's artifact store, and all of it reads back over HTTP: the
    run tree, the metrics, a picture byte for byte, the registered champion predicting as the local checkpoint.
    Then the server is lost in the middle of a training: the stage fails saying so, nothing is FINISHED that did
    not finish, and once the server is back `dvc repro` completes and the orphaned run ends KILLED."""
    url, folder, start = team_server
    server = start()
    ws, env = tiny_copy
    env = {**env, "MLFLOW_TRACKING_URI": url}
    done = dvc(ws, env, "repro", "-f")
    assert ran(done) >= {"train_generator@gan", "train_reference", *TRAINED, "evaluate"}

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    (pipeline,) = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    group = pipeline.info.run_id
    tree = Counter(r.data.tags["kind"] for r in runs if r.data.tags.get("run_group") == group)
    assert tree == {"pipeline": 1, "variant": 3, "training": 3, "generator": 1, "reference": 1}, tree
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)  # proxied by the server
    metrics = json.loads((ws / "reports" / "metrics.json").read_text())
    for run in (r for r in runs if r.data.tags.get("kind") == "variant"):
        assert run.data.metrics["acc_20way"] == pytest.approx(metrics[run.data.tags["variant"]]["acc_20way"])
    picture = Path(client.download_artifacts(group, "curves.png", str(tmp_path)))
    assert picture.read_bytes() == (ws / "reports" / "curves.png").read_bytes()
    assert list((folder / "artifacts").rglob("curves.png")), "the picture is in the server's artifact store"
    stored = server_query(folder, "SELECT count(*) FROM runs")
    assert int(stored) == len(runs)  # the backend store is PostgreSQL

    champion = client.get_model_version_by_alias(EXPERIMENT, "champion")
    (episode,) = episode_folders(tmp_path / "episode", omniglot_zips["images_evaluation"], 1, 20, seed=3)
    answers = []
    for model in (f"models:/{EXPERIMENT}@champion", str(ws / "models/classifiers" / champion.tags["variant"])):
        answers.append(sh([str(BIN / "oneshot-gda"), "predict", "--model", model, "--support",
                           str(episode / "support"), "--query", str(episode / "queries")], ws, env).stdout)
    served, local = (list(csv.DictReader(io.StringIO(answer))) for answer in answers)
    assert len(served) == 20
    assert [(r["query"], r["prediction"]) for r in served] == [(r["query"], r["prediction"]) for r in local]
    # the registered model scores in torch (bf16), the local folder in ONNX Runtime (fp32): rounding apart
    np.testing.assert_allclose([float(r["score"]) for r in served], [float(r["score"]) for r in local], atol=1e-2)

    # The server goes away while a (longer) training logs to it.
    params = ws / "params.yaml"
    kept = params.read_text()
    longer = yaml.safe_load(kept)
    longer["siamese"]["max_steps"] = 100_000
    params.write_text(yaml.safe_dump(longer, sort_keys=False))
    stage = subprocess.Popen([str(BIN / "dvc"), "repro", "-s", "train_classifier@baseline"], cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not [r for r in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
               if r.data.params.get("siamese.max_steps") == "100000"]:
        assert stage.poll() is None and time.monotonic() < deadline, stage.communicate()
        time.sleep(1)
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    _, err = stage.communicate(timeout=300)
    assert stage.returncode != 0
    assert f"the MLflow tracking server {url} stopped answering during this stage" in err, err[-3000:]
    assert "Traceback" not in err

    params.write_text(kept)
    start()  # the same folder: the same cluster, its runs kept
    (orphan,) = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert orphan.data.params["siamese.max_steps"] == "100000"
    again = dvc(ws, env, "repro")
    assert "train_classifier@baseline" not in ran(again)  # restored from the cache: the same params as before
    # Nothing reran, so no stage ended the orphan: the command the error names does
    tidied = sh([sys.executable, "-m", "pipeline.lifecycle"], ws, env)
    assert "1 MLflow run(s) ended KILLED" in tidied.stdout
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert dvc(ws, env, "status").stdout.strip() == "Data and pipelines are up to date."
    finished = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    assert "100000" not in {r.data.params.get("siamese.max_steps") for r in finished}



# ---------------------------------------------------------------------------- two processes, Lightning's DDP


def test_two_ddp_processes_train_every_model_once_and_as_well_as_one(tiny_copy: tuple[Path, dict[str, str]]) -> None:
    """`trainer.strategy: ddp`, `devices: 2` on the CPU (gloo), at the one-process run's global batch (half the
    per-process batch): every classifier, the reference and the generator train in two processes; each output
    is written once, by rank zero (no rank's temporaries left), MLflow holds one run per training, and the
    accuracies stay near the one-process run's (both printed)."""
    ws, env = tiny_copy
    one = json.loads((ws / "reports" / "metrics.json").read_text())
    folders = [ws / "models/generators/gan", ws / "models/reference",
               *(ws / "models/classifiers" / v for v in ("baseline", "classic", "gan"))]
    rows = {folder: (folder / "metrics.csv").read_text().count("\n") for folder in folders}  # one process's logs
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["trainer"].update(strategy="ddp", devices=2, num_threads=1)  # 2 processes x 1 thread on 2 cores
    params["siamese"]["batch_classes"] //= 2  # per process: the same global batch as the one-process run
    params["reference"]["batch_classes"] //= 2
    params["generator"]["gan"]["batch_size"] //= 2
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = dvc(ws, env, "repro")
    assert ran(done) >= {"train_generator@gan", "train_reference", *TRAINED, "evaluate"}
    log = done.stdout + done.stderr
    assert log.count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 5, log[-3000:]  # 5 trainings

    for folder in folders:
        files = sorted(p.name for p in folder.iterdir())
        assert "run.json" in files and not [f for f in files if f.startswith(".")], (folder, files)
        # as many log rows as the one-process run wrote: one process logged
        assert (folder / "metrics.csv").read_text().count("\n") == rows[folder], f"{folder}/metrics.csv"
    assert not [p for p in ws.rglob(".*") if ".tmp" in p.name], "a rank left a temporary output"

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    latest = client.search_runs([experiment.experiment_id], "tags.kind = 'pipeline'", order_by=["start_time DESC"])
    assert len(latest) == 2  # the one-process run's and this one's
    tree = client.search_runs([experiment.experiment_id], f"tags.run_group = '{latest[0].info.run_id}'")
    trainings = sorted(r.info.run_name for r in tree if r.data.tags["kind"] in ("training", "generator", "reference"))
    assert trainings == ["generator:gan", "reference embedding", "train:baseline", "train:classic", "train:gan"]
    assert {r.info.status for r in tree} == {"FINISHED"}
    every = Counter(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
    assert all(every[name] == 2 for name in trainings), every  # one run per training and process count, not two

    two = json.loads((ws / "reports" / "metrics.json").read_text())
    print("\nacc_20way, one process (global batch 16) vs two DDP processes (8 each), 95% CIs over episodes:")
    for variant in ("baseline", "classic", "gan"):
        a, b = one[variant], two[variant]
        print(f"  {variant:9s} {a['acc_20way']:.3f} ± {a['acc_20way_ci95']:.3f}   {b['acc_20way']:.3f} ± "
              f"{b['acc_20way_ci95']:.3f}")
        # 30 training steps: far above chance (0.05) in both, and apart by no more than such short trainings
        # differ from one seed to another (benchmarks/distributed.py measures it on longer ones)
        assert b["acc_20way"] > 0.25 and abs(a["acc_20way"] - b["acc_20way"]) < 0.15, (variant, a, b)
