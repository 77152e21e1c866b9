"""The one module that writes files: every output goes to a temporary name and is renamed into place,
so an interrupted stage leaves either the old output or the new one, never half of one."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Temporary names: `.<name>.<pid>.<random>.tmp<suffix>` beside the output, and `.<name>.<pid>.old` while a
# folder is swapped. The pid says whether their writer still runs: one whose writer died (kill -9, a power cut)
# is removed by the next write of the same output. `.dvcignore` keeps them out of DVC's hashes meanwhile.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?:[^.]+\.tmp.*|old)$")


def current_umask() -> int:
    """The process's umask, read without changing it (Linux's /proc), else by setting it back at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale(path: Path) -> list[Path]:
    """Remove the temporaries of `path` left by writers that no longer run; returns what was removed."""
    return remove_dead_temporaries(path.parent, path.name)


def remove_dead_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries in `folder` (of the output `name` only, if given) whose writer no longer runs."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for other in folder.iterdir():
        match = _TEMPORARY.match(other.name)
        if match and (name is None or match["name"] == name) and not _alive(int(match["pid"])):
            if other.is_dir() and not other.is_symlink():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)
            removed.append(other)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on failure remove it.

    The file gets the mode the umask gives (as `open` would), not `mkstemp`'s owner-only 600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~current_umask())
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; on success it replaces `path` whole.

    The folder gets the mode the umask gives, not `mkdtemp`'s owner-only 700."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged(outputs: dict[Path, str]) -> Iterator[dict[Path, Path]]:
    """For each output path, a path under the given file name in a private folder, to write (and log) first.

    When the block succeeds, each staged file replaces its output (all copied beside their outputs, then
    renamed into place); when it fails, or a staged file is missing, no output is touched. The private
    folder sits beside the first output, named as `atomic_dir`'s temporaries (removed if its writer dies)."""
    first = next(iter(outputs))
    first.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(first)
    folder = Path(tempfile.mkdtemp(dir=first.parent, prefix=f".{first.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        aside = {out: folder / str(i) / name for i, (out, name) in enumerate(outputs.items())}
        for path in aside.values():
            path.parent.mkdir()
        yield aside
        with contextlib.ExitStack() as stack:
            for out, path in aside.items():
                shutil.copyfile(path, stack.enter_context(atomic_path(out)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_npz(path: str | Path, **arrays: Any) -> None:
    """A compressed .npz (what `np.load` reads) whose bytes depend only on the arrays: `np.savez_compressed`
    stamps each member with the time, so a rerun with the same inputs would give another file and DVC
    would rerun every stage after it."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, fix: str | None = None) -> Any:
    """A JSON file; a missing or corrupt one is an error naming it and `fix` (by default: how to restore it)."""
    path = Path(path)
    fix = fix or "run the stage that writes it (`dvc repro`)"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); {fix}") from exc
