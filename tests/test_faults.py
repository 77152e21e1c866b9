"""The fault catalogue: bad params and faults (kill -9, SIGTERM, an unreachable tracking server, two `dvc repro`
at once, a corrupt file) driven through the real commands on a finished workspace of the tiny profile.

Each case runs in its own copy of that workspace and asserts the exit status, the message, that every output
written before is byte-identical afterwards (or, for DVC-cached outputs that DVC itself deletes before a
stage reruns, restorable by `dvc checkout`), that no temporary file is left, and that no MLflow run stays
RUNNING; after each fault, `dvc repro` completes and `dvc status` is clean. The CLI's own faults (concurrent
and killed `oneshot-gda enroll`, degenerate images, bad flags) are in tests/test_cli_faults.py.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.server import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUTPUTS = ("data", "models", "reports")

pytestmark = pytest.mark.slow


def dvc(ws: Path, env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "dvc"), *args], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=timeout)


def snapshot(ws: Path) -> dict[str, bytes]:
    """Every file of the outputs, and dvc.lock but for check_params' entry (DVC records a valid edit there even
    when a later stage fails): what a failed command must leave as it was."""
    files = [p for top in OUTPUTS for p in (ws / top).rglob("*") if p.is_file()]
    out = {str(p.relative_to(ws)): p.read_bytes() for p in sorted(files)}
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    lock["stages"].pop("check_params", None)
    out["dvc.lock"] = yaml.safe_dump(lock).encode()
    return out


def temporaries(ws: Path) -> list[str]:
    """pipeline/io.py's temporary names anywhere under the outputs."""
    return sorted(str(p.relative_to(ws)) for top in OUTPUTS for p in (ws / top).rglob(".*")
                  if ".tmp" in p.name or p.name.endswith(".old"))


def running_runs(ws: Path) -> list[str]:
    with sqlite3.connect(ws / "mlflow.db") as db:
        return [name for (name,) in db.execute("SELECT name FROM runs WHERE status = 'RUNNING'")]


def run_status(ws: Path, name: str) -> str:
    with sqlite3.connect(ws / "mlflow.db") as db:
        return db.execute("SELECT status FROM runs WHERE name = ? ORDER BY start_time DESC LIMIT 1",
                          (name,)).fetchone()[0]


def set_param(ws: Path, dotted: str, value: Any = None, delete: bool = False) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def restore_and_repro(ws: Path, env: dict[str, str], *repro: str) -> None:
    """What a user does after a fault: put params.yaml back, `dvc repro` (`repro`: rerun the stage that was
    killed); then nothing is left to do."""
    subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=ws, check=True)
    done = dvc(ws, env, "repro", *repro)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    status = dvc(ws, env, "status")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    assert temporaries(ws) == []
    assert running_runs(ws) == []


def descendants(root: int) -> list[int]:
    """Every process below `root` (children, theirs, ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # field 4, after the parenthesised command name (which may hold spaces): the parent's pid
            parents.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    found, todo = [], [root]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def stage_pid(root: int, pattern: str, timeout: float = 120) -> int:
    """The pid of the stage's Python process under `root` (the `dvc repro` the test started) whose command line
    matches `pattern`, once it runs (not the `sh -c` that DVC may have put in between). Only that process tree
    is searched: a matching stage of another DVC run on the machine is never the one a test kills."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(root):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if re.search(pattern, command) and Path(f"/proc/{pid}/comm").read_text().startswith("python"):
                    return pid
            except FileNotFoundError:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no process matching {pattern!r} started under pid {root} within {timeout} s")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie has exited; only its parent has not reaped it
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def workspace(tiny_copy: tuple[Path, dict[str, str]]) -> tuple[Path, dict[str, str]]:
    """Each case works on its own copy of the tiny profile's finished workspace (tests/conftest.py)."""
    return tiny_copy


# ---------------------------------------------------------------------------- bad params: `dvc repro`

# Through DVC, the bad params that once cost outputs (DVC deleted them before any stage checked its params).
# Every other kind of mistake and its message is in tests/test_schema.py, checked without DVC; here, that
# the check runs first and nothing is lost.
BAD_PARAMS = [
    ("episode too wide", "evaluation.ways", [20, 500], "500-way novel-class episodes"),
    ("seen episode too wide", "evaluation.seen_way", 500, "n_way=500"),
    ("negative sweep count", "sweep.counts", [-1, 4], "`sweep.counts`"),
    ("unknown generator of a variant", "variants.gan.synthetic", "diffusion", "`variants.gan.synthetic`"),
    ("image too small", "data.image_size", 8, "`data.image_size` = 8"),
]


@pytest.mark.parametrize(("key", "value", "message"), [c[1:] for c in BAD_PARAMS], ids=[c[0] for c in BAD_PARAMS])
def test_a_bad_param_stops_dvc_repro_with_its_name_and_loses_nothing(workspace: tuple[Path, dict[str, str]],
                                                                       key: str, value: Any, message: str) -> None:
    ws, env = workspace
    before = snapshot(ws)
    set_param(ws, key, value)
    result = dvc(ws, env, "repro")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, result.stdout[-1500:] + result.stderr[-1500:]
    assert "Traceback" not in result.stdout + result.stderr
    after = snapshot(ws)
    assert after == before
    assert temporaries(ws) == [] and running_runs(ws) == []


def test_invalid_yaml_in_params_is_named(workspace: tuple[Path, dict[str, str]]) -> None:
    ws, env = workspace
    before = snapshot(ws)
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "\nsiamese: [unclosed\n")
    result = dvc(ws, env, "repro")
    assert result.returncode != 0 and "params.yaml" in result.stderr
    assert snapshot(ws) == before
    restore_and_repro(ws, env)


def test_a_batch_larger_than_the_classes_fails_in_its_stage_and_checkout_restores_the_model(
        workspace: tuple[Path, dict[str, str]]) -> None:
    """Data-dependent (the classes a variant trains on), so its stage says it: DVC has deleted that cached model
    by then, and `dvc checkout` brings it back byte for byte."""
    ws, env = workspace
    before = snapshot(ws)
    set_param(ws, "variants.classic.siamese", {"batch_classes": 500})
    result = dvc(ws, env, "repro", "train_classifier@classic")
    assert result.returncode != 0
    assert "batch_classes=500 is larger than the 24 training classes" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert temporaries(ws) == [] and running_runs(ws) == []
    subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=ws, check=True)
    assert dvc(ws, env, "checkout").returncode == 0
    assert snapshot(ws) == before
    restore_and_repro(ws, env)


def test_a_valid_edit_reruns_only_the_stages_that_read_it(workspace: tuple[Path, dict[str, str]]) -> None:
    """check_params reruns on any edit, but its stamp does not change: an edit of `evaluation` reruns
    check_params and the two stages that read it, nothing else."""
    ws, env = workspace
    set_param(ws, "evaluation.n_episodes", 30)
    result = dvc(ws, env, "repro")
    assert result.returncode == 0, result.stderr[-2000:]
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"check_params", "sweep@gan", "evaluate"}  # the sweep scores episodes of `evaluation` too


# ---------------------------------------------------------------------------- faults


def test_kill_9_of_a_training_stage_loses_nothing_and_the_next_repro_cleans_up(
        workspace: tuple[Path, dict[str, str]]) -> None:
    ws, env = workspace
    set_param(ws, "siamese.max_steps", 20000)  # long enough to be killed mid-training
    repro = subprocess.Popen([str(BIN / "dvc"), "repro", "train_classifier@classic"], cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = stage_pid(repro.pid, "stages.train_classifier --variant classic .*--out models/classifiers/classic")
    wait_for(lambda: any((ws / "models" / "classifiers").glob(".classic.*.tmp")), 60, "the training's temporary")
    time.sleep(2)
    os.kill(pid, signal.SIGKILL)
    err = repro.communicate(timeout=60)[1]
    assert repro.returncode != 0 and ("exited with -9" in err or "exited with 137" in err), err[-2000:]
    assert any(".classic." in t for t in temporaries(ws))  # what a kill -9 leaves, until the next write
    assert dvc(ws, env, "status").returncode == 0  # .dvcignore: the debris is neither output nor input
    restore_and_repro(ws, env)
    assert run_status(ws, "train:classic") in ("KILLED", "FINISHED")


def test_sigterm_to_dvc_repro_ends_the_training_child_too(workspace: tuple[Path, dict[str, str]]) -> None:
    """DVC does not pass a SIGTERM on: the stage asks the kernel for one when DVC dies (PR_SET_PDEATHSIG),
    then removes its temporary outputs and ends its MLflow run FAILED, instead of training on as an orphan."""
    ws, env = workspace
    set_param(ws, "siamese.max_steps", 20000)
    repro = subprocess.Popen([str(BIN / "dvc"), "repro", "train_classifier@classic"], cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = stage_pid(repro.pid, "stages.train_classifier --variant classic .*--out models/classifiers/classic")
    wait_for(lambda: any((ws / "models" / "classifiers").glob(".classic.*.tmp")), 60, "the training's temporary")
    time.sleep(2)
    repro.send_signal(signal.SIGTERM)
    repro.communicate(timeout=60)
    wait_for(lambda: not alive(pid), 30, "the training stage ending after DVC")
    assert temporaries(ws) == []
    assert run_status(ws, "train:classic") == "FAILED"
    assert running_runs(ws) == []
    restore_and_repro(ws, env)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "kill -9"])
def test_a_killed_evaluate_keeps_the_last_metrics(workspace: tuple[Path, dict[str, str]], sig: int) -> None:
    """Metrics, plot data and pictures are `persist` outputs written whole at the end: whatever kills evaluate
    leaves the previous ones byte-identical."""
    ws, env = workspace
    before = snapshot(ws)
    repro = subprocess.Popen([str(BIN / "dvc"), "repro", "-f", "-s", "evaluate"], cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = stage_pid(repro.pid, "stages.evaluate --data")
    # From the pictures on, through the MLflow logging, its outputs are staged in a temporary folder in reports/.
    wait_for(lambda: any((ws / "reports").glob(".*.tmp")) or repro.poll() is not None, 120,
             "evaluate writing its outputs aside")
    assert repro.poll() is None, "evaluate finished before it could be killed"
    os.kill(pid, sig)
    repro.communicate(timeout=60)
    assert repro.returncode != 0
    after = snapshot(ws)
    for name in ("reports/metrics.json", "reports/plots/accuracy.csv", "reports/accuracy.png", "dvc.lock"):
        assert after[name] == before[name], name
    if sig == signal.SIGTERM:
        assert temporaries(ws) == [] and running_runs(ws) == []
    # DVC still holds evaluate's last good run as up to date: the user reruns the killed stage, which removes
    # the debris of a kill -9 and ends its run KILLED.
    restore_and_repro(ws, env, "-f", "-s", "evaluate")


def test_an_unreachable_tracking_server_stops_the_run_before_anything_changes(
        workspace: tuple[Path, dict[str, str]]) -> None:
    ws, env = workspace
    port = free_port()  # nobody listens on it
    server = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    before = snapshot(ws)
    set_param(ws, "evaluation.n_episodes", 30)
    result = dvc(ws, server, "repro")  # check_params reruns on the edit, and reaches for the server first
    assert result.returncode != 0
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in result.stderr
    result = dvc(ws, server, "repro", "-f", "-s", "evaluate")  # a forced stage: its own check says the same
    assert result.returncode != 0 and "is unreachable" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(ws) == before
    restore_and_repro(ws, env)


def test_two_dvc_repro_at_once_the_second_stops_on_dvcs_lock(workspace: tuple[Path, dict[str, str]]) -> None:
    """DVC locks what a running stage reads and writes: a second `dvc repro` of the same stage stops as soon as
    it reaches it, naming the first; the first finishes as if alone."""
    ws, env = workspace
    set_param(ws, "siamese.max_steps", 800)  # still training when the second reaches the stage, on a slow machine
    first = subprocess.Popen([str(BIN / "dvc"), "repro", "train_classifier@classic"], cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = stage_pid(first.pid, "stages.train_classifier --variant classic .*--out models/classifiers/classic")
        second = dvc(ws, env, "repro", "train_classifier@classic")
        assert alive(pid), "the first finished before the second reached the stage: the test proves nothing"
        assert second.returncode != 0 and "is busy, it is being blocked by" in second.stderr, second.stderr[-1500:]
        assert f"(PID {first.pid})" in second.stderr
        # 800 steps: ~2 min where the CPU has bf16 in hardware; where it is emulated (AVX2 only, e.g. Zen 3) more
        # than 12 min of CPU, measured with the rest of a test run beside it
        err = first.communicate(timeout=2400)[1]
    finally:  # a failed check leaves no training behind to slow the tests after it
        if first.poll() is None:
            first.terminate()
            first.wait(timeout=60)
    assert first.returncode == 0, err[-2000:]
    assert temporaries(ws) == [] and running_runs(ws) == []
    restore_and_repro(ws, env)


def test_a_corrupt_prepared_file_is_rebuilt_and_nothing_downstream_reruns(
        workspace: tuple[Path, dict[str, str]]) -> None:
    ws, env = workspace
    before = snapshot(ws)
    dataset = ws / "data" / "prepared" / "dataset.npz"
    dataset.chmod(0o644)
    dataset.write_bytes(dataset.read_bytes()[:1000])  # truncated, as by a full disk
    result = dvc(ws, env, "repro")
    assert result.returncode == 0, result.stderr[-2000:]
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert ran <= {"prepare"}  # rebuilt (or restored from the run cache); every later input hashes the same
    assert snapshot(ws) == before
    assert "Data and pipelines are up to date" in dvc(ws, env, "status").stdout


def test_make_gate_on_a_corrupt_metrics_file_names_it(workspace: tuple[Path, dict[str, str]]) -> None:
    ws, env = workspace
    metrics = ws / "reports" / "metrics.json"
    metrics.write_text(metrics.read_text()[:-20])
    venv = BIN.parent  # the tests' own environment, used as it is: not set up again (-o)
    result = subprocess.run(["make", "gate", f"VENV={venv}", "-o", "setup", "-o", f"{venv}/.installed"], cwd=ws,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{Path('reports/metrics.json')}: not valid JSON" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_debris_of_a_dead_writer_is_no_input_and_goes_at_the_next_stage(
        workspace: tuple[Path, dict[str, str]]) -> None:
    """A killed stage's temporary folder inside models/classifiers (an input of evaluate) changes no hash, and the
    next stage run removes it (its writer's pid is gone)."""
    ws, env = workspace
    dead = subprocess.Popen(["true"])
    dead.wait()
    debris = ws / "models" / "classifiers" / f".classic.{dead.pid}.abcd1234.tmp"
    debris.mkdir()
    (debris / "model.safetensors").write_bytes(b"half a model")
    assert "Data and pipelines are up to date" in dvc(ws, env, "status").stdout
    result = dvc(ws, env, "repro", "-f", "-s", "sweep@gan")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not debris.exists() and f"removed {debris.relative_to(ws)}" in result.stderr


# ---------------------------------------------------------------------------- what the outputs are


def test_a_repro_prints_no_lightning_chatter(tiny_run: tuple[Path, dict[str, str]]) -> None:
    """No advertisement, no hardware summary, no deprecation warning about Lightning's internals: what is left
    is the pipeline's own lines and the progress bars."""
    log = (tiny_run[0] / "repro.log").read_text()
    assert "Running stage 'train_classifier@gan'" in log and "Trainer.fit` stopped" in log
    for noise in ("Tip:", "litlogger", "GPU available", "TPU available", "Automatic Mixed Precision",
                  "is deprecated", "Warning:"):
        assert noise not in log, noise


def test_the_same_params_give_byte_identical_models_and_metrics(workspace: tuple[Path, dict[str, str]]) -> None:
    ws, env = workspace
    before = snapshot(ws)
    for stage in ("train_classifier@gan", "evaluate"):
        result = dvc(ws, env, "repro", "-f", "-s", stage)
        assert result.returncode == 0, result.stderr[-2000:]
    after = snapshot(ws)
    for name in ("models/classifiers/gan/model.safetensors", "reports/metrics.json", "reports/plots/accuracy.csv"):
        assert after[name] == before[name], name


def test_outputs_get_the_modes_the_umask_gives(tiny_run: tuple[Path, dict[str, str]]) -> None:
    """Not mkstemp's owner-only 600: another user, or a serving container, reads what the pipeline wrote."""
    ws, _ = tiny_run
    umask = os.umask(0o22)
    os.umask(umask)
    written = [ws / "reports" / "metrics.json", ws / "reports" / "accuracy.png",
               ws / "reports" / "plots" / "curves.csv", ws / "reports" / "sweep" / "gan.csv"]
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
