"""Atomic outputs: an interrupted write leaves the old output whole and no temporary files behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.io import atomic_dir, atomic_path, read_json, remove_dead_temporaries, staged, write_json, write_npz


class Interrupted(RuntimeError):
    pass


def test_atomic_path_success_creates_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"  # the parent is created too
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.suffix == ".json"  # writers that pick a format from the suffix still work
        tmp.write_text("new")
        assert not target.exists()  # nothing appears before the body is done
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_atomic_path_success_replaces_old_content(tmp_path: Path) -> None:
    target = tmp_path / "model.ckpt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_atomic_path_failure_keeps_old_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.ckpt"
    target.write_text("old")
    with pytest.raises(Interrupted), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise Interrupted
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_atomic_path_failure_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(Interrupted), atomic_path(tmp_path / "out.npz") as tmp:
        tmp.write_bytes(b"partial")
        raise Interrupted
    assert list(tmp_path.iterdir()) == []


def write_tree(folder: Path, tag: str) -> None:
    (folder / "nested").mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text(f"{tag} a")
    (folder / "nested" / "b.txt").write_text(f"{tag} b")


def read_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_dir_success_creates_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "data" / "prepared"
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and tmp.parent == target.parent
        write_tree(tmp, "new")
        assert not target.exists()
    assert read_tree(target) == {"a.txt": "new a", "nested/b.txt": "new b"}
    assert [p.name for p in target.parent.iterdir()] == ["prepared"]


def test_atomic_dir_success_replaces_the_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    write_tree(target, "old")
    (target / "stale.txt").write_text("from an earlier run")
    with atomic_dir(target) as tmp:
        write_tree(tmp, "new")
        assert read_tree(target)["a.txt"] == "old a"
    assert read_tree(target) == {"a.txt": "new a", "nested/b.txt": "new b"}  # no stale file survives
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]  # no .prepared.old or temp folder


def test_atomic_dir_failure_keeps_old_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    write_tree(target, "old")
    with pytest.raises(Interrupted), atomic_dir(target) as tmp:
        write_tree(tmp, "new")
        raise Interrupted
    assert read_tree(target) == {"a.txt": "old a", "nested/b.txt": "old b"}
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_atomic_dir_failure_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(Interrupted), atomic_dir(tmp_path / "prepared") as tmp:
        write_tree(tmp, "new")
        raise Interrupted
    assert list(tmp_path.iterdir()) == []


def test_write_json_round_trip_and_missing_file(tmp_path: Path) -> None:
    data = {"baseline": {"acc_20way": 0.5, "acc_20way_ci95": 0.01}, "order": [3, 1, 2]}
    write_json(tmp_path / "metrics.json", data)
    assert read_json(tmp_path / "metrics.json") == data
    assert list(data) == list(read_json(tmp_path / "metrics.json"))  # key order kept for DVC's table
    with pytest.raises(FileNotFoundError, match=r"nope\.json: not found; run the stage that writes it"):
        read_json(tmp_path / "nope.json")


def test_write_npz_is_byte_deterministic_and_loads(tmp_path: Path) -> None:
    arrays = {"images": np.arange(60, dtype=np.uint8).reshape(3, 1, 4, 5), "names": np.array(["a", "bc"])}
    write_npz(tmp_path / "a.npz", **arrays)
    write_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["images", "names"]
        np.testing.assert_array_equal(data["images"], arrays["images"])
        np.testing.assert_array_equal(data["names"], arrays["names"])
    assert not list(tmp_path.glob(".*")), "no temporary file left beside it"


def test_outputs_get_the_modes_the_umask_gives(tmp_path: Path) -> None:
    """Not mkstemp's owner-only 600 / mkdtemp's 700: another user, or a serving container, reads them."""
    before = os.umask(0o027)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w.bin").write_bytes(b"w")
    finally:
        os.umask(before)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o750


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".model.{dead.pid}.x1y2.tmp"
    stale.mkdir()
    live = tmp_path / f".model.{os.getpid()}.a1b2.tmp"  # a writer that still runs: never touched
    live.mkdir()
    other = tmp_path / f".report.{dead.pid}.c3d4.tmp.json"  # another output's: only its own write removes it
    other.write_text("{")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w.bin").write_bytes(b"w")
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_dead_temporaries(tmp_path) == [other]


def test_staged_outputs_replace_the_old_ones_only_when_the_block_succeeds(tmp_path: Path) -> None:
    a, b = tmp_path / "metrics.json", tmp_path / "plots" / "table.csv"
    write_json(a, {"old": True})
    with pytest.raises(RuntimeError), staged({a: a.name, b: b.name}) as aside:
        aside[a].write_text('{"new": true}\n')
        aside[b].write_text("x\n1\n")
        raise RuntimeError("the tracking server went away while logging")
    assert json.loads(a.read_text()) == {"old": True} and not b.exists()
    with staged({a: a.name, b: b.name}) as aside:
        aside[a].write_text('{"new": true}\n')
        aside[b].write_text("x\n1\n")
    assert json.loads(a.read_text()) == {"new": True} and b.read_text() == "x\n1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "plots"]
