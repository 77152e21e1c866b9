"""Finished pipeline workspaces for tests: the environment their `dvc` commands run in, and copies to change."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


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
