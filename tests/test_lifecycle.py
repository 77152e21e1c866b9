"""A stage ends with the process that launched it, whichever shell DVC put between them (pipeline/lifecycle.py):
bash replaces itself with the stage, dash stays as its parent and outlives the launcher."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAGE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from pipeline.lifecycle import guard_stage
    guard_stage()
    out = Path(sys.argv[1])
    try:
        (out / "pid").write_text(str(os.getpid()))
        time.sleep(60)
    finally:
        (out / "cleaned").write_text("the stage's finally ran")
""")


def exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
@pytest.mark.parametrize("shell", ["/bin/sh", "bash"])
def test_a_stage_stops_and_cleans_up_when_its_launcher_dies(tmp_path: Path, shell: str) -> None:
    found = shutil.which(shell)
    assert found, f"{shell} is not installed: the test needs both shells DVC may run a stage through"
    shell = found
    (tmp_path / "stage.py").write_text(STAGE)
    command = f"{sys.executable} {tmp_path / 'stage.py'} {tmp_path}"
    launcher = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])",
                                 shell, "-c", command], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    while not (tmp_path / "pid").is_file() or not (tmp_path / "pid").read_text():
        assert time.monotonic() < deadline and launcher.poll() is None, "the stage did not start"
        time.sleep(0.05)
    stage = int((tmp_path / "pid").read_text())
    launcher.send_signal(signal.SIGKILL)  # as a CI timeout ends `dvc repro`: no chance to pass anything on
    launcher.wait()
    deadline = time.monotonic() + 10
    while not exited(stage):
        assert time.monotonic() < deadline, f"the stage outlived its launcher under {shell}"
        time.sleep(0.05)
    assert (tmp_path / "cleaned").read_text() == "the stage's finally ran"
