"""Shared fixtures: where the real Omniglot zips are, a small prepared subset of them, real drawings as files, and
the tiny profile's finished workspace."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.data.fewshot import FewShotSet
from pipeline.data.omniglot import SPLITS, prepare_omniglot
from pipeline.data.prepare import DataConfig
from pipeline.profile import make_workspace
from tests.workspaces import copy_workspace, stage_env


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The folder holding the real images_background.zip and images_evaluation.zip (from OMNIGLOT_DIR)."""
    value = os.environ.get("OMNIGLOT_DIR")
    if not value:
        pytest.fail("OMNIGLOT_DIR is unset: point it at the folder holding images_background.zip and "
                    "images_evaluation.zip (e.g. OMNIGLOT_DIR=/work/shared/data/omniglot pytest)", pytrace=False)
    folder = Path(value).expanduser().resolve()
    missing = [f"{s}.zip" for s in SPLITS if not (folder / f"{s}.zip").is_file()]
    if missing:
        pytest.fail(f"OMNIGLOT_DIR={folder} lacks {', '.join(missing)}", pytrace=False)
    return folder


@pytest.fixture(scope="session")
def omniglot_zips(omniglot_dir: Path) -> dict[str, Path]:
    """Split name -> path of its real zip."""
    return {s: omniglot_dir / f"{s}.zip" for s in SPLITS}


@pytest.fixture(scope="session")
def tiny_omniglot(omniglot_zips: dict[str, Path]) -> tuple[FewShotSet, dict]:
    """The real data cut to the first 2 characters of every alphabet (100 classes, 2,000 drawings), 1 x 28 x 28."""
    return prepare_omniglot(omniglot_zips, DataConfig(max_classes_per_group=2))


@pytest.fixture(scope="session")
def kanji_zip() -> Path:
    """The real kanji.zip (1,200 classes x 20 fonts in 24 groups, 64 x 64 PNG): KANJI_ZIP, else ../shared beside
    the checkout."""
    value = os.environ.get("KANJI_ZIP")
    path = Path(value) if value else Path(__file__).resolve().parents[2] / "shared" / "data" / "kanji" / "kanji.zip"
    if not path.is_file():
        pytest.fail(f"{path}: the kanji zip is missing; set KANJI_ZIP to its path", pytrace=False)
    return path


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Tiny networks run fastest on one thread, and the result does not depend on how busy the machine is."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def novel_drawings(omniglot_zips: dict[str, Path]) -> dict[str, list[bytes]]:
    """The real PNG files of 12 evaluation characters (each from another alphabet), 20 drawers each:
    'Alphabet_characterNN' -> [PNG bytes, drawer order]. Write them out to make support and query folders."""
    with zipfile.ZipFile(omniglot_zips["images_evaluation"]) as archive:
        members = sorted(n for n in archive.namelist() if n.endswith(".png"))
        by_class: dict[str, list[str]] = {}
        for name in members:
            _, alphabet, character, _ = name.split("/")
            by_class.setdefault(f"{alphabet}_{character}", []).append(name)
        firsts: dict[str, str] = {}
        for key in by_class:  # the first character of each alphabet
            firsts.setdefault(key.rsplit("_", 1)[0], key)
        return {key: [archive.read(n) for n in by_class[key]] for key in list(firsts.values())[:12]}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, omniglot_dir: Path) -> tuple[Path, dict[str, str]]:
    """The tiny profile's workspace after a complete `dvc repro`, committed (clean to copy), and the environment
    its commands run in. Never changed: tests that change it work on `tiny_copy` (or `copy_workspace`)."""
    root = Path(__file__).resolve().parents[1]
    ws = make_workspace(root, tmp_path_factory.mktemp("tiny") / "project", "tiny")
    env = stage_env(omniglot_dir)
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=ws, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (ws / "repro.log").write_text(done.stdout + done.stderr)
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "tiny run"], cwd=ws, check=True, env=env)
    return ws, env


@pytest.fixture
def tiny_copy(tiny_run: tuple[Path, dict[str, str]], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh copy of the tiny profile's finished workspace for one test, and its environment."""
    ws, env = tiny_run
    return copy_workspace(ws, tmp_path / "ws"), env
