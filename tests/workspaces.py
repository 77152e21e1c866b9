"""Finished pipeline workspaces for tests: the environment their `dvc` commands run in, copies to change, and
one-shot episodes of real drawings as the image folders a user gives `oneshot-gda`, and the wait for a server
started on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from pipeline.server import healthy


def stage_env(omniglot_dir: Path) -> dict[str, str]:
    """The environment a test's `dvc` commands run in: this interpreter's tools first, the real zips, no tracking
    URI or DVC root leaking in from outside, and a git identity for the commits the tests make."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    bin_dir = Path(sys.executable).parent
    # DVC runs stages through $SHELL: /bin/sh (dash) stays between DVC and the stage, where bash would exec it;
    # the harder case, and the one a machine without SHELL set has.
    env.update(OMNIGLOT_DIR=str(omniglot_dir), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", SHELL="/bin/sh",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@localhost")
    return env


def copy_workspace(finished: Path, dest: Path) -> Path:
    """A copy of a finished workspace (its git repo, DVC cache and MLflow store with it) to change freely."""
    shutil.copytree(finished, dest, symlinks=True)
    return dest


def episode_folders(root: Path, zip_path: Path, n_episodes: int, n_way: int, seed: int) -> list[Path]:
    """`n_episodes` one-shot tasks of real drawings: root/ep<i>/support/<class>/a.png, root/ep<i>/queries/<class>.png
    (another drawer of the class), classes and drawers drawn with `seed` from the evaluation alphabets."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(zip_path) as archive:
        by_class: dict[str, list[str]] = {}
        for name in sorted(n for n in archive.namelist() if n.endswith(".png")):
            by_class.setdefault("_".join(name.split("/")[1:3]), []).append(name)
        keys = sorted(by_class)
        folders = []
        for e in range(n_episodes):
            folder = root / f"ep{e:02d}"
            for key in rng.choice(keys, n_way, replace=False):
                support, query = rng.choice(by_class[key], 2, replace=False)
                for path, data in ((folder / "support" / key / "a.png", support),
                                   (folder / "queries" / f"{key}.png", query)):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(archive.read(data))
            folders.append(folder)
    return folders


def wait_until_up(url: str, server: subprocess.Popen, log: Path, seconds: float, path: str = "/health") -> None:
    """Wait for a server we started to answer `url` + `path`; fail with the end of its log if it exits or is
    still silent after `seconds`."""
    deadline = time.monotonic() + seconds
    while not healthy(url, path):
        assert server.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"{url}{path} did not answer in {seconds:.0f} s"
        time.sleep(0.5)
