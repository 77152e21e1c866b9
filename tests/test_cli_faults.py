"""Faults of the `oneshot-gda` command, each driven through the real command on real drawings and a real model:
enrolls into one bank at the same time or killed half way, images that carry no drawing, flags that make an
answer meaningless, outputs in folders that do not exist, and an MLflow server that does not answer.

Every failing case checks the exit status, the `error: ...` line, and that the folder it ran in is byte for byte
as before: no output written, no bank changed, no folder created, no lock or temporary file left. Enrolls that
race or are killed, and the MLflow cases, run as real subprocesses; the rest call the same `main()` in-process.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import cli, inference
from pipeline.checkpoints import FILENAME
from pipeline.server import free_port
from tests.drawings import class_folders, write_drawing, write_model

ROOT = Path(__file__).resolve().parents[1]
# MLflow retries a refused connection 7 times with back-off by default (minutes); a test needs one try.
MLFLOW_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread: None) -> None:
    """Tiny networks: see conftest.single_thread."""


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *map(str, args)]


def user_env(**extra: str) -> dict[str, str]:
    """This checkout importable, no model registry of the caller's own, and `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_REGISTRY_URI"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def oneshot(*args: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the command as a user would, from `cwd`."""
    return subprocess.run(command(*args), cwd=cwd, env=user_env(**env), capture_output=True, text=True, timeout=120)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file under `folder` -> its bytes, every folder -> None: what a failed command must leave alone."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def resized(png: bytes, width: int, height: int) -> Image.Image:
    """A real drawing shrunk to `width` x `height` (box filter: its strokes become grey pixels)."""
    return Image.open(io.BytesIO(png)).convert("L").resize((width, height), Image.Resampling.BOX)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, novel_drawings: dict[str, list[bytes]]) -> Path:
    """model/ (a small Siamese network as train_classifier writes it); supports of disjoint classes: base (2),
    first (3), second (3), more (1); real drawings as queries; the same drawings too small, or erased."""
    root = tmp_path_factory.mktemp("faults")
    write_model(root / "model" / FILENAME)
    names = sorted(novel_drawings)
    for support, chosen in (("base", names[:2]), ("first", names[2:5]), ("second", names[5:8]), ("more", names[8:9])):
        class_folders(root / support, novel_drawings, chosen, [0])
    for i, name in enumerate(names[:3]):
        write_drawing(root / "queries" / f"q{i}.png", novel_drawings[name][10])
    png = novel_drawings[names[0]][11]
    for width, height in ((1, 1), (7, 7), (8, 8), (105, 4)):
        resized(png, width, height).save(root / f"small-{width}x{height}.png")
    # The page of a real drawing with its strokes erased: every pixel white.
    Image.eval(Image.open(io.BytesIO(png)).convert("L"), lambda _: 255).save(root / "blank.png")
    return root


@pytest.fixture(scope="module")
def model(workspace: Path) -> inference.TrainedModel:
    return inference.load_model(workspace / "model")


def enrolled(path: Path, model: inference.TrainedModel, support: Path) -> inference.Bank:
    bank = inference.enroll(model, inference.read_support(support, model.spec))
    bank.save(path)
    return bank


def temporaries(folder: Path, name: str = "bank.npz") -> list[str]:
    """Temporary files of `name` (`io.atomic_path`'s `.<name>.<pid>.<random>.tmp<suffix>`)."""
    return [p for p in os.listdir(folder) if p.startswith(f".{name}.") and ".tmp" in p]


# ---------------------------------------------------------------------------- enrolls that race or die


def waiting_on(lock: Path) -> set[int]:
    """Pids blocked in flock() on `lock`: Linux's /proc/locks lists them as `N: -> FLOCK ... <pid> <dev>:<inode> .`"""
    inode = os.stat(lock).st_ino
    pids = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[-3].endswith(f":{inode}"):
            pids.add(int(fields[-4]))
    return pids


def test_concurrent_enrolls_into_one_bank_keep_every_class(workspace: Path, model: inference.TrainedModel,
                                                           tmp_path: Path) -> None:
    bank = tmp_path / "bank.npz"
    base = enrolled(bank, model, workspace / "base")
    # Hold the bank's lock until both enrolls wait for it: they then read the bank at the same moment
    # unless the lock makes them take turns, which without it would drop one enroll's classes.
    lock = tmp_path / "bank.npz.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        racers = [subprocess.Popen(command("enroll", "--model", workspace / "model", "--support", workspace / support,
                                           "--out", "bank.npz"), cwd=tmp_path, env=user_env(), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for support in ("first", "second")]
        deadline = time.monotonic() + 60
        while waiting_on(lock) != {p.pid for p in racers}:
            assert all(p.poll() is None for p in racers), [p.communicate() for p in racers]
            assert time.monotonic() < deadline, "the enrolls never waited on the bank's lock"
            time.sleep(0.05)
    finally:
        os.close(fd)
    outputs = [p.communicate(timeout=60) for p in racers]
    assert [p.returncode for p in racers] == [0, 0], outputs
    # One went first (2 + 3 classes), the other added to its bank (8).
    assert sorted(int(out.split()[1]) for out, _ in outputs) == [5, 8], outputs

    merged = inference.Bank.load(bank)
    supports = {s: inference.read_support(workspace / s, model.spec) for s in ("first", "second")}
    order = sorted(supports, key=lambda s: merged.class_names.index(supports[s].class_names[0]))
    expected = inference.enroll(model, supports[order[1]], inference.enroll(model, supports[order[0]], base))
    assert merged.class_names == expected.class_names and len(merged.class_names) == 8
    np.testing.assert_array_equal(merged.labels, expected.labels)
    np.testing.assert_allclose(merged.embeddings, expected.embeddings, rtol=0, atol=1e-5)
    assert os.listdir(tmp_path) == ["bank.npz"], "no lock file or temporary file left"


def test_an_enroll_killed_while_writing_leaves_the_old_bank_and_the_next_one_succeeds(
        workspace: Path, model: inference.TrainedModel, tmp_path: Path) -> None:
    # The base classes' real embeddings, repeated to 400,000 examples: writing the bank takes a tenth of a
    # second, long enough to see its temporary file appear and kill the writer in the middle.
    small = inference.enroll(model, inference.read_support(workspace / "base", model.spec))
    repeat = 200_000
    big = dataclasses.replace(small, labels=np.tile(small.labels, repeat),
                              embeddings=np.tile(small.embeddings, (repeat, 1)))
    bank = tmp_path / "bank.npz"
    big.save(bank)
    before = bank.read_bytes()

    writer = subprocess.Popen(command("enroll", "--model", workspace / "model", "--support", workspace / "more",
                                      "--out", "bank.npz"), cwd=tmp_path, env=user_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not temporaries(tmp_path):
        assert writer.poll() is None, "the enroll ended before it wrote the new bank"
        assert time.monotonic() < deadline, "the enroll never started writing the new bank"
        time.sleep(0.001)
    writer.send_signal(signal.SIGKILL)
    assert writer.wait(timeout=10) == -signal.SIGKILL, "the enroll finished before the kill reached it"
    assert bank.read_bytes() == before, "the old bank, whole"
    assert (tmp_path / "bank.npz.lock").is_file(), "a killed enroll leaves its lock file (the kernel drops the lock)"
    assert set(os.listdir(tmp_path)) <= {"bank.npz", "bank.npz.lock", *temporaries(tmp_path)}

    done = oneshot("enroll", "--model", workspace / "model", "--support", workspace / "more", "--out", "bank.npz",
                   cwd=tmp_path)  # it would wait forever if the dead writer still held the lock: the timeout fails it
    assert done.returncode == 0, done.stderr
    assert f"bank.npz: 3 classes (1 new), {2 * repeat + 1} examples (1 added)" in done.stdout
    after = inference.Bank.load(bank)
    more = inference.read_support(workspace / "more", model.spec)
    assert after.class_names == (*small.class_names, *more.class_names)
    np.testing.assert_array_equal(after.embeddings[:-1], big.embeddings)
    assert os.listdir(tmp_path) == ["bank.npz"], "the dead writer's lock and temporary files are gone"


# ---------------------------------------------------------------------------- input that makes the answer meaningless


def fault_case(case: str, workspace: Path, tmp: Path) -> tuple[list[str], str]:
    """Arguments wrong in one way, run in `tmp` (which holds out.csv and a bank.npz of 2 classes already), and what
    the error must say."""
    model, base, queries = str(workspace / "model"), str(workspace / "base"), str(workspace / "queries")
    predict = ["predict", "--model", model, "--support", base, "--query", queries, "--output", str(tmp / "out.csv")]
    enroll = ["enroll", "--model", model, "--out", str(tmp / "bank.npz"), "--support"]
    verify = ["verify", "--model", model, str(workspace / "queries" / "q0.png")]
    if case == "a 1 x 1 query":
        return [*predict, "--query", str(workspace / "small-1x1.png")], \
            "small-1x1.png: 1 x 1 pixels, too small to hold a drawing; give an image at least 8 x 8 pixels"
    if case == "a 7 x 7 support image":
        class_folders(tmp / "support", {"tiny": [(workspace / "small-7x7.png").read_bytes()]}, ["tiny"], [0])
        return [*enroll, str(tmp / "support")], "tiny/00.png: 7 x 7 pixels, too small to hold a drawing"
    if case == "a 105 x 4 strip to verify":
        return [*verify, str(workspace / "small-105x4.png")], "small-105x4.png: 105 x 4 pixels, too small"
    if case == "a blank support image":
        support = class_folders(tmp / "support", {"alpha": [(workspace / "queries" / "q0.png").read_bytes(),
                                                            (workspace / "blank.png").read_bytes()]}, ["alpha"], [0, 1])
        return [*enroll, str(support)], \
            "alpha/01.png: blank image (every pixel the same, no strokes), no example of class 'alpha'; remove it"
    if case.startswith("threshold "):
        value = case.split()[1]
        return [*verify, str(workspace / "queries" / "q1.png"), f"--threshold={value}"], \
            f"--threshold {value}: not a finite number; give a similarity such as 0.5"
    if case == "top-k above the bank's classes":
        return [*predict[:3], "--bank", str(tmp / "bank.npz"), *predict[5:], "--top-k", "3"], \
            "top_k=3; it must be between 1 and the 2 enrolled classes"
    if case.startswith("top-k "):
        value = case.split()[1]
        return [*predict, "--top-k", value], f"--top-k {value}: must be 1 or more"
    if case == "a bank of another model":  # fails with the bank's lock held: the lock file goes too
        write_model(tmp / "other" / FILENAME, seed=1)
        return ["enroll", "--model", str(tmp / "other"), "--out", str(tmp / "bank.npz"), "--support",
                str(workspace / "more")], "bank.npz was enrolled with another model"
    if case == "--output in a missing folder":
        return [*predict[:-1], str(tmp / "missing" / "out.csv")], \
            f"--output {tmp}/missing/out.csv: {tmp}/missing: no such folder; create it first"
    if case == "--output two missing folders deep":
        return [*predict[:-1], str(tmp / "a" / "b" / "out.csv")], f"{tmp}/a/b: no such folder; create it first"
    if case == "--output is a folder":
        (tmp / "reports").mkdir()
        return [*predict[:-1], str(tmp / "reports")], f"--output {tmp}/reports: is a folder; give the name of the file"
    if case == "--out in a missing folder":
        return [*enroll[:-3], "--out", str(tmp / "banks" / "bank.npz"), "--support", base], \
            f"--out {tmp}/banks/bank.npz: {tmp}/banks: no such folder; create it first"
    if case == "--out under a file":
        return [*enroll[:-3], "--out", str(tmp / "out.csv" / "bank.npz"), "--support", base], \
            f"{tmp}/out.csv: not a folder; create it first"
    raise ValueError(case)


@pytest.mark.parametrize("case", [
    "a 1 x 1 query", "a 7 x 7 support image", "a 105 x 4 strip to verify", "a blank support image",
    "threshold nan", "threshold inf", "threshold -inf", "top-k 0", "top-k -1", "top-k above the bank's classes",
    "a bank of another model", "--output in a missing folder", "--output two missing folders deep",
    "--output is a folder", "--out in a missing folder", "--out under a file"])
def test_each_fault_exits_1_naming_it_and_changes_nothing(case: str, workspace: Path, model: inference.TrainedModel,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out.csv").write_text("query,prediction,score\nearlier.png,alpha,0.9\n")
    enrolled(tmp_path / "bank.npz", model, workspace / "base")
    args, message = fault_case(case, workspace, tmp_path)
    before = snapshot(tmp_path)
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err, captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert snapshot(tmp_path) == before, "no output written, no bank changed, no folder, lock or temporary file"


def test_an_output_in_a_missing_folder_from_the_console(workspace: Path, tmp_path: Path) -> None:
    done = oneshot("predict", "--model", workspace / "model", "--support", workspace / "base", "--query",
                   workspace / "queries", "--output", "predictons/out.csv", cwd=tmp_path)  # a typo in the folder
    assert done.returncode == 1
    assert done.stderr == ("error: --output predictons/out.csv: predictons: no such folder; create it first, "
                           "or write elsewhere\n")
    assert done.stdout == "" and os.listdir(tmp_path) == []


def test_a_blank_query_is_answered_with_a_warning_naming_it(workspace: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    queries = [workspace / "queries" / "q0.png", workspace / "blank.png", workspace / "queries" / "q1.png",
               workspace / "small-8x8.png"]  # 8 x 8: the smallest image taken
    predict = ["predict", "--model", str(workspace / "model"), "--support", str(workspace / "base"), "--top-k", "2"]
    assert cli.main([*predict, "--query", *map(str, queries), "--output", str(tmp_path / "out.csv")]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"warning: {workspace / 'blank.png'}: blank image (every pixel the same, no strokes); "
                            "its answer means nothing\n")
    rows = list(csv.reader(io.StringIO((tmp_path / "out.csv").read_text())))[1:]
    assert [r[0] for r in rows] == [str(q) for q in queries], "a row for each query, the blank one too"
    # The blank query changes nothing for the others.
    assert cli.main([*predict, "--query", str(queries[0]), str(queries[2])]) == 0
    alone = list(csv.reader(io.StringIO(capsys.readouterr().out)))[1:]
    assert [rows[0], rows[2]] == alone


def test_verify_of_a_blank_image_warns(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blank = workspace / "blank.png"
    assert cli.main(["verify", "--model", str(workspace / "model"), str(workspace / "queries" / "q0.png"),
                     str(blank)]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"warning: {blank}: blank image (every pixel the same, no strokes); "
                            "its answer means nothing\n")
    assert captured.out.splitlines()[0] == "a,b,same,similarity,threshold,target"


# ---------------------------------------------------------------------------- an MLflow server that does not answer



def test_an_unreachable_tracking_server_is_one_error_line(workspace: Path, model: inference.TrainedModel,
                                                          tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "out.csv").write_text("query,prediction,score\nearlier.png,alpha,0.9\n")
    enrolled(tmp_path / "bank.npz", model, workspace / "base")
    before = snapshot(tmp_path)
    cases: list[tuple[str, list[str | Path]]] = [
        ("runs:/0123456789abcdef0123456789abcdef/model",
         ["predict", "--support", workspace / "base", "--query", workspace / "queries", "--output", "out.csv"]),
        ("models:/omniglot-vae/1", ["enroll", "--support", workspace / "more", "--out", "bank.npz"]),
    ]
    for uri, args in cases:
        done = oneshot(*args, "--model", uri, cwd=tmp_path, MLFLOW_TRACKING_URI=server, **MLFLOW_FAST)
        assert done.returncode == 1
        assert re.fullmatch(rf"error: {re.escape(uri)}: cannot reach the tracking server at {re.escape(server)} "
                            r"\(\[Errno \d+\] Connection refused\); start it or set MLFLOW_TRACKING_URI\n",
                            done.stderr), done.stderr
        assert done.stdout == ""
        assert snapshot(tmp_path) == before


def test_an_unreachable_model_registry_is_named(workspace: Path, tmp_path_factory: pytest.TempPathFactory,
                                                tmp_path: Path) -> None:
    """The tracking store answers (SQLite), the registry server does not: MLflow's own error, not a traceback."""
    registry = f"http://127.0.0.1:{free_port()}"
    store = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    done = oneshot("verify", "--model", "models:/omniglot-vae/1", workspace / "queries" / "q0.png",
                   workspace / "queries" / "q1.png", cwd=tmp_path, MLFLOW_TRACKING_URI=store,
                   MLFLOW_REGISTRY_URI=registry, **MLFLOW_FAST)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert re.fullmatch(rf"error: models:/omniglot-vae/1: cannot reach the model registry at {re.escape(registry)} "
                        r"\(\[Errno \d+\] Connection refused\); start it or set MLFLOW_REGISTRY_URI",
                        done.stderr.splitlines()[-1]), done.stderr  # above it: MLflow's notes on creating the store
    assert done.stdout == "" and os.listdir(tmp_path) == []
