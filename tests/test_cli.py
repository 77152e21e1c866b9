"""The `oneshot-gda` command on real drawings: predict with either support layout, enroll into a bank and predict
from it, verify, and bad input (exit status 1, an error naming the thing, nothing written).

The commands a user types run as real subprocesses (`python -m pipeline.cli`, what the console script calls);
the bad-input cases call the same `main()` in-process, one subprocess case showing the console's behaviour.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import cli, inference
from pipeline.checkpoints import FILENAME
from pipeline.generators import save_generator
from pipeline.generators.vae import ExemplarVAE
from tests.drawings import class_files, class_folders, tiny_net, write_drawing, write_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread: None) -> None:
    """Tiny networks: see conftest.single_thread."""


def oneshot(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the command as a user would, from `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, novel_drawings: dict[str, list[bytes]]) -> Path:
    """model/model.safetensors (a small Siamese network with a calibrated threshold, in its model folder as
    train_classifier writes it), support folders in both layouts, queries."""
    root = tmp_path_factory.mktemp("cli")
    write_model(root / "model" / FILENAME)
    names = sorted(novel_drawings)
    class_folders(root / "by-folder", novel_drawings, names[:4], [0, 1])
    class_files(root / "by-file", novel_drawings, names[:4])
    forms = ["png", "rgb-large", "rgba-transparent", "jpeg"]
    for i, name in enumerate(names[:4]):
        write_drawing(root / "queries" / f"{i}-{name}.{forms[i]}", novel_drawings[name][10 + i], forms[i])
    write_drawing(root / "single.png", novel_drawings[names[2]][15])
    return root


def expected_rows(model_path: Path, support: Path, queries: list[Path], top_k: int = 1) -> list[list[str]]:
    """What the Python API says for each query, as (class, score, ...) strings."""
    model = inference.load_model(model_path)
    result = inference.predict(model, inference.enroll(model, inference.read_support(support, model.spec)),
                               inference.read_images(queries, model.spec), top_k)
    return [[v for n, s in zip(names, scores, strict=True) for v in (str(n), f"{s:.6f}")]
            for names, scores in zip(result.classes, result.scores, strict=True)]


# ---------------------------------------------------------------------------- predict, enroll, verify


def test_predict_with_class_folders_prints_a_row_per_query_in_input_order(workspace: Path) -> None:
    done = oneshot("predict", "--model", "model", "--support", "by-folder", "--query", "single.png", "queries",
                   "single.png", cwd=workspace)
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["query", "prediction", "score"]
    queries = [Path("single.png"), *(Path("queries", f) for f in sorted(os.listdir(workspace / "queries"))),
               Path("single.png")]
    assert [r[0] for r in rows[1:]] == [str(q) for q in queries]
    assert [r[1:] for r in rows[1:]] == expected_rows(workspace / "model", workspace / "by-folder",
                                                      [workspace / q for q in queries])
    assert rows[1][0] == rows[-1][0] and rows[1][1:] == rows[-1][1:], "the same query twice: two equal rows"


def test_predict_with_files_named_by_class_writes_the_top_k(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    done = oneshot("predict", "--model", workspace / "model" / FILENAME, "--support", workspace / "by-file", "--query",
                   workspace / "queries", "--top-k", "3", "--output", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["query", "prediction", "score", "prediction_2", "score_2", "prediction_3", "score_3"]
    queries = sorted((workspace / "queries").iterdir())
    assert [r[0] for r in rows[1:]] == [str(q) for q in queries]
    assert [r[1:] for r in rows[1:]] == expected_rows(workspace / "model", workspace / "by-file", queries, top_k=3)
    for row in rows[1:]:
        assert len(set(row[1::2])) == 3 and float(row[2]) >= float(row[4]) >= float(row[6])


def test_enroll_twice_then_predict_from_the_bank(workspace: Path, tmp_path: Path,
                                                 novel_drawings: dict[str, list[bytes]],
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = sorted(novel_drawings)[:3]
    class_folders(tmp_path / "first", novel_drawings, [a, b], [0])
    class_folders(tmp_path / "more", novel_drawings, [b, c], [1])  # another drawing of b, a new class c
    model = workspace / "model"
    done = oneshot("enroll", "--model", model, "--support", "first", "--out", "bank.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "bank.npz: 2 classes (2 new), 2 examples" in done.stdout
    monkeypatch.chdir(tmp_path)  # the second time in-process: the same main(), without another start-up
    assert cli.main(["enroll", "--model", str(model), "--support", "more", "--out", "bank.npz"]) == 0
    assert "bank.npz: 3 classes (1 new), 4 examples (2 added)" in capsys.readouterr().out
    assert inference.Bank.load(tmp_path / "bank.npz").class_names == (a, b, c)

    done = oneshot("predict", "--model", model, "--bank", "bank.npz", "--query", workspace / "queries",
                   "--top-k", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # The bank scores as the support it holds, given at once: b with both its drawings.
    class_folders(tmp_path / "all", novel_drawings, [a, b], [0])
    class_folders(tmp_path / "all", novel_drawings, [b, c], [1])
    queries = sorted((workspace / "queries").iterdir())
    rows = list(csv.reader(io.StringIO(done.stdout)))[1:]
    assert [r[0] for r in rows] == [str(q) for q in queries]
    assert [r[1:] for r in rows] == expected_rows(model, tmp_path / "all", queries, 2)


def test_verify_prints_the_decision_with_the_calibrated_threshold(workspace: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    same = oneshot("verify", "--model", "model", "by-file/" + sorted(os.listdir(workspace / "by-file"))[0],
                   "by-file/" + sorted(os.listdir(workspace / "by-file"))[0], cwd=workspace)
    assert same.returncode == 0, same.stderr
    (row,) = read_csv(same.stdout)
    assert list(row) == ["a", "b", "same", "similarity", "threshold", "target"]
    assert (row["same"], row["threshold"], row["target"]) == ("true", "0.500000", "eer")  # write_model's calibration
    assert float(row["similarity"]) == pytest.approx(1.0, abs=1e-2), "an image is like itself"

    other = sorted((workspace / "queries").iterdir())[0]
    assert cli.main(["verify", "--model", str(workspace / "model" / FILENAME), str(workspace / "single.png"),
                     str(other), "--threshold", "1.5"]) == 0
    (row,) = read_csv(capsys.readouterr().out)
    assert (row["same"], row["threshold"], row["target"]) == ("false", "1.500000", "given")


# ---------------------------------------------------------------------------- bad input


def test_bad_input_from_the_console_exits_1_with_one_line_and_writes_nothing(workspace: Path, tmp_path: Path) -> None:
    done = oneshot("predict", "--model", workspace / "model", "--support", workspace / "by-file", "--query",
                   "lost.png", "--output", "out.csv", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "error: lost.png: no such query file or folder\n"
    assert done.stdout == "" and not (tmp_path / "out.csv").exists()


def bad_case(case: str, workspace: Path, tmp: Path) -> tuple[list[str], str]:
    """Arguments that are wrong in one way (the output goes to tmp/out.csv), and what the error must name."""
    model, support, queries = str(workspace / "model"), str(workspace / "by-file"), str(workspace / "queries")
    predict = ["predict", "--model", model, "--support", support, "--query", queries, "--output", str(tmp / "out.csv")]
    if case == "missing query":
        return [*predict[:-4], "--query", str(tmp / "nope.png"), *predict[-2:]], "nope.png: no such query file"
    if case == "non-image query":
        (tmp / "notes.txt").write_text("hello")
        return [*predict, "--query", str(tmp / "notes.txt")], "notes.txt: not a readable image"
    if case == "empty support folder":
        (tmp / "empty").mkdir()
        return [*predict, "--support", str(tmp / "empty")], "empty: empty support folder"
    if case == "missing support folder":
        return [*predict, "--support", str(tmp / "nowhere")], "nowhere: no such support folder"
    if case == "model is a generator":
        save_generator("vae", ExemplarVAE(16, latent_dim=2, widths=(8, 16)), tmp / "generator" / FILENAME)
        return [*predict, "--model", str(tmp / "generator")], \
            "generator/model.safetensors: a 'generator' checkpoint, not a siamese checkpoint"
    if case == "model is random bytes":
        (tmp / "random").mkdir()
        (tmp / "random" / FILENAME).write_bytes(np.random.default_rng(0).bytes(4096))
        return [*predict, "--model", str(tmp / "random")], "random/model.safetensors: not a siamese checkpoint"
    if case == "model is a torch pickle":
        torch.save({"kind": "siamese", "state_dict": tiny_net().state_dict()}, tmp / "model.pt")
        return [*predict, "--model", str(tmp / "model.pt")], "model.pt: not a siamese checkpoint"
    if case == "missing model":
        return [*predict, "--model", str(tmp / "absent")], "absent: no such model file"
    if case == "model folder without a model":
        (tmp / "hollow").mkdir()
        return [*predict, "--model", str(tmp / "hollow")], "hollow/model.safetensors: no such model file"
    if case == "bank is no bank":
        (tmp / "bank.npz").write_bytes(b"not a bank")
        return [*predict[:3], "--bank", str(tmp / "bank.npz"), *predict[5:]], "bank.npz: not a bank"
    if case == "bank of another model":
        other = inference.load_model(write_model(tmp / "other" / FILENAME, seed=1))
        inference.enroll(other, inference.read_support(support, other.spec)).save(tmp / "bank.npz")
        return [*predict[:3], "--bank", str(tmp / "bank.npz"), *predict[5:]], "bank.npz was enrolled with another"
    if case == "top-k above the classes":
        return [*predict, "--top-k", "5"], "top_k=5; it must be between 1 and the 4 enrolled classes"
    if case == "verify a missing image":
        return ["verify", "--model", model, str(tmp / "gone.png"), support + "/" + os.listdir(support)[0]], \
            "gone.png: no such image file"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing query", "non-image query", "empty support folder", "missing support folder",
                                  "model is a generator", "model is random bytes", "model is a torch pickle",
                                  "missing model", "model folder without a model", "bank is no bank",
                                  "bank of another model", "top-k above the classes", "verify a missing image"])
def test_each_bad_input_exits_1_naming_it(case: str, workspace: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    args, message = bad_case(case, workspace, tmp_path)
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err, captured.err
    assert captured.out == "" and not (tmp_path / "out.csv").exists()


def test_a_failed_enroll_leaves_the_bank_as_it_was(workspace: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bank = tmp_path / "bank.npz"
    assert cli.main(["enroll", "--model", str(workspace / "model"), "--support", str(workspace / "by-folder"),
                     "--out", str(bank)]) == 0
    before = bank.read_bytes()
    broken = tmp_path / "broken"
    class_files(broken, {"ok": [(workspace / "single.png").read_bytes()]}, ["ok"])
    (broken / "bad.png").write_bytes(b"no image")
    assert cli.main(["enroll", "--model", str(workspace / "model"), "--support", str(broken),
                     "--out", str(bank)]) == 1
    assert "bad.png: not a readable image" in capsys.readouterr().err
    assert bank.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.npz", "broken"], "no temporary file left"
    # A new bank that fails is not written at all.
    assert cli.main(["enroll", "--model", str(workspace / "model"), "--support", str(broken),
                     "--out", str(tmp_path / "new.npz")]) == 1
    assert not (tmp_path / "new.npz").exists()
