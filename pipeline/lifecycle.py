"""How a stage's process ends: with its parent, and through its own cleanup when it is told to stop.

DVC runs each stage as a child process and does not pass signals on: a SIGTERM to `dvc repro` (a CI
timeout, `kill`) ends DVC and leaves the stage running, to write its outputs after DVC has gone. A stage
therefore asks the kernel for a SIGTERM when its parent dies (Linux's PR_SET_PDEATHSIG). DVC starts a stage
through `$SHELL -c` (or /bin/sh): bash replaces itself with a lone command, but dash and zsh stay as the stage's
parent and outlive DVC, so a stage whose parent is a shell also watches the shell's parent and stops the same
way when it goes. A stage turns SIGTERM and SIGHUP into an exception raised where it is: `finally` blocks
remove its temporary outputs (pipeline/io.py), Lightning finalizes its loggers as failed and MLflow ends
the open runs FAILED, and the exit status is 128 + the signal number, as a shell reports a process a signal
ended. SIGINT (Ctrl+C) already raises KeyboardInterrupt, with the same cleanup. A kill -9 leaves no time
for any of this: its temporary files are removed by the next write of the same output, and its MLflow run
is ended KILLED by the next stage that tracks (pipeline/tracking.py).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType, TracebackType

import yaml

from pipeline import io

SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "ash", "busybox"})
WATCH_EVERY_S = 0.5


class Terminated(SystemExit):
    """A stage told to stop by a signal; exits with status 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


def _stop(signum: int, frame: FrameType | None) -> None:
    for s in SIGNALS:  # one signal is enough; a second must not cut the cleanup short
        signal.signal(s, signal.SIG_IGN)
    print(f"\n{signal.Signals(signum).name}: stopping, removing temporary outputs", file=sys.stderr, flush=True)
    raise Terminated(signum)


_OURS = (str(Path(__file__).resolve().parents[1] / "pipeline"), str(Path(__file__).resolve().parents[1] / "stages"))


def _report(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """An error the project raised on purpose (a bad param, a missing file, an impossible episode: raised in
    pipeline/ or stages/, its message names the thing and the fix) is one line; anything else, a bug or a
    library's own failure, keeps its traceback. PIPELINE_TRACEBACK=1 shows every traceback."""
    last = traceback.extract_tb(tb)[-1].filename if tb is not None else ""
    if (isinstance(exc, (ValueError, OSError, RuntimeError)) and last.startswith(_OURS)
            and not os.environ.get("PIPELINE_TRACEBACK")):
        print(f"error: {exc}", file=sys.stderr)
        return
    failure = lost_server(exc)
    if failure and not os.environ.get("PIPELINE_TRACEBACK"):
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        print(f"error: the MLflow tracking server {uri} stopped answering during this stage ({failure}). "
              "This stage saved nothing; the run it was logging stays RUNNING on the server until the next "
              "stage that tracks, or `python -m pipeline.lifecycle`, ends it KILLED. Bring the server back and "
              "rerun `dvc repro`", file=sys.stderr)
        return
    sys.__excepthook__(kind, exc, tb)


def lost_server(exc: BaseException) -> str:
    """The connection failure, when `exc` (or what caused it) is MLflow giving up on an HTTP tracking server that
    stopped answering; else ''."""
    import requests  # MLflow's HTTP client: loaded already wherever a tracking server was spoken to

    seen: BaseException | None = exc
    while seen is not None:  # MLflow raises its own exception while handling requests' (the chain's context)
        if isinstance(seen, requests.exceptions.ConnectionError):
            return "connection refused" if "refused" in str(seen) else "connection lost"
        if isinstance(seen, requests.exceptions.RetryError):  # answered, but with errors (5xx) until retries ran out
            return "server errors"
        seen = seen.__cause__ or seen.__context__
    return ""


def output_folders(root: Path) -> list[Path]:
    """The folders that hold dvc.yaml's outputs (`foreach` names expanded by what exists): where temporaries sit."""
    try:
        stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    folders: set[Path] = set()
    for stage in stages.values():
        stage = stage.get("do", stage) if isinstance(stage, dict) else {}
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind) or []:
                path = next(iter(out)) if isinstance(out, dict) else str(out)
                pattern = re.sub(r"\$\{[^}]*\}", "*", str(Path(path).parent))
                folders.update(p for p in root.glob(pattern) if p.is_dir())
    return sorted(folders)


def remove_dead_temporaries(root: Path) -> list[Path]:
    """Remove, beside every output of the pipeline at `root`, the temporaries of writers that have died."""
    removed = [p for folder in output_folders(root) for p in io.remove_dead_temporaries(folder)]
    for path in removed:
        print(f"removed {path}: a temporary output left by a stage that was killed", file=sys.stderr)
    return removed


def _parent_of(pid: int) -> int | None:
    """The parent pid of `pid` from /proc (None once it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[1])


def _watch_shell_parent(shell: int, launcher: int) -> None:
    """While the shell that runs this stage has `launcher` (DVC) as its parent, do nothing; once the shell is
    reparented or gone, DVC has died: stop as PR_SET_PDEATHSIG would have had DVC been the parent."""
    while _parent_of(shell) == launcher:
        time.sleep(WATCH_EVERY_S)
    os.kill(os.getpid(), signal.SIGTERM)


def _end_with_parent() -> None:
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        _stop(signal.SIGTERM, None)
    try:
        name = Path(f"/proc/{parent}/comm").read_text().strip()
    except OSError:
        return
    launcher = _parent_of(parent)
    if name in SHELLS and launcher not in (None, 0, 1):
        threading.Thread(target=_watch_shell_parent, args=(parent, launcher), name="watch-launcher",
                         daemon=True).start()


def guard_stage() -> None:
    """Call first in a stage's `main()`: end with the parent process, stop cleanly on SIGTERM or SIGHUP,
    report the project's own errors in one line, and remove what killed stages left behind."""
    sys.excepthook = _report
    if Path("dvc.yaml").is_file():
        remove_dead_temporaries(Path("."))
    for s in SIGNALS:
        signal.signal(s, _stop)
    if sys.platform.startswith("linux"):
        _end_with_parent()


def tidy(params_file: Path = Path("params.yaml")) -> None:
    """`python -m pipeline.lifecycle` in the project root: what the next stage would clean up after a kill -9,
    now, for when nothing is left to rerun (DVC restored the killed stage's outputs from its run cache)."""
    from pipeline import tracking
    from pipeline.config import TrackingConfig, load_params, section

    removed = remove_dead_temporaries(Path("."))
    cfg = section(load_params(params_file), TrackingConfig, "tracking")
    ended = tracking.end_orphaned_runs(tracking.tracking_uri(), cfg.experiment) if cfg.enabled else []
    print(f"{len(removed)} temporary output(s) removed, {len(ended)} MLflow run(s) ended KILLED")


if __name__ == "__main__":
    tidy()
