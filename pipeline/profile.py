"""Run profiles: a profile is a partial params.yaml laid over the project's own.

`python -m pipeline.profile smoke build/smoke` copies the project's files into build/smoke, writes
its params.yaml with `profiles/smoke.yaml` laid over, and commits it there as a fresh git repo,
so `dvc repro` runs the quick profile without touching the main workspace's outputs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ParamsError, load_params

# A profile states these whole (the variants it runs, the floors it is held to, the ordered role rule) rather
# than patching the defaults.
REPLACED_WHOLE = ("variants", "gate.floors", "data.roles")


def overlay(base: dict[str, Any], overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`base` with `overrides` laid over it, key by key; an override of an unknown key is an error."""
    out = dict(base)
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ParamsError(f"profile sets `{dotted}`, which params.yaml does not have")
        if isinstance(value, dict) and isinstance(base[key], dict) and dotted not in REPLACED_WHOLE:
            out[key] = overlay(base[key], value, dotted + ".")
        else:
            out[key] = value
    return out


def project_files(root: Path) -> list[Path]:
    """Tracked and untracked-but-not-ignored files, as git sees them (no data, models or caches)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [Path(p) for p in listed if p and (root / p).is_file()]


def profile_params(params_file: Path, profile: str) -> dict[str, Any]:
    """`params_file` with `profiles/<profile>.yaml` (beside it) laid over it."""
    profiles = params_file.parent / "profiles"
    profile_file = profiles / f"{profile}.yaml"
    if not profile_file.is_file():
        known = sorted(p.stem for p in profiles.glob("*.yaml"))
        raise ParamsError(f"{profile_file}: no such profile; known profiles: {', '.join(known)}")
    return overlay(load_params(params_file), yaml.safe_load(profile_file.read_text()) or {})


# Params holding paths relative to the project root: in a workspace copy they must keep pointing at the user's files.
ROOT_RELATIVE = (("data", "path"), ("data", "split_file"), ("data", "local_dir"))


def anchor_paths(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """`params` with each relative path of ROOT_RELATIVE made absolute against `root`."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for section_name, key in ROOT_RELATIVE:
        value = out.get(section_name, {}).get(key)
        if isinstance(value, str) and not Path(os.path.expanduser(os.path.expandvars(value))).is_absolute():
            out[section_name][key] = str((root / value).resolve())
    return out


# The results of the project's own run (its lock file and reports): a workspace makes its own, so `dvc metrics
# diff` there compares with the workspace's own runs, never with the default profile's numbers.
RESULT_FILE, RESULT_FOLDER = "dvc.lock", "reports"


def is_result(rel: Path) -> bool:
    """The project's lock file, or a file under reports/ other than a .gitignore."""
    return rel.as_posix() == RESULT_FILE or (rel.parts[0] == RESULT_FOLDER and rel.name != ".gitignore")


def make_workspace(root: Path, dest: Path, profile: str | None) -> Path:
    """Copy the project at `root` to `dest` with `profiles/<profile>.yaml` laid over its params
    (None: the params as they are, the default profile), without the project's results (`is_result`).

    Relative data paths are anchored at `root`, so the copy reads the same data the project does.
    """
    params = load_params(root / "params.yaml") if profile is None else profile_params(root / "params.yaml", profile)
    merged = anchor_paths(params, root.resolve())
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel in project_files(root):
        if is_result(rel):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    header = f"# params.yaml with profiles/{profile}.yaml laid over\n" if profile else ""
    (dest / "params.yaml").write_text(header + yaml.safe_dump(merged, sort_keys=False))
    env = {**os.environ, "GIT_AUTHOR_NAME": "profile", "GIT_AUTHOR_EMAIL": "profile@localhost",
           "GIT_COMMITTER_NAME": "profile", "GIT_COMMITTER_EMAIL": "profile@localhost"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", f"{profile or 'default'} profile workspace"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", help="name of a file in profiles/, without .yaml")
    ap.add_argument("dest", type=Path, help="folder to create (replaced if it exists)")
    args = ap.parse_args()
    make_workspace(Path.cwd(), args.dest, args.profile)
    print(f"{args.dest}: project with the {args.profile} profile")


if __name__ == "__main__":
    main()
