"""Where a pipeline run's time goes, stage by stage: one `dvc repro` of a profile, as a user runs it, timed.

The profile's workspace is built fresh (`python -m pipeline.profile`), then `dvc repro` runs there with
its own MLflow store; each stage's time runs from DVC's "Running stage" line to the next one, so it
holds what DVC spends on it too (checking and caching its outputs). Then each stage's start-up, the
interpreter importing its entry point, is timed alone (the best of 3). Prints the table the README's
stage table comes from: seconds, share of the run, start-up.

    python benchmarks/stages.py [--profile smoke] [--workspace build/stages-smoke]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from pipeline.profile import make_workspace

ROOT = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"^Running stage '([^']+)'")


def timed_repro(workspace: Path, env: dict[str, str]) -> tuple[list[tuple[str, float]], float]:
    """(stage, seconds) in the order DVC ran them, and the whole run's seconds."""
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(["dvc", "repro"], cwd=workspace, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = RUNNING.match(line)
            if found:
                marks.append((found.group(1), time.perf_counter()))
                print(f"{marks[-1][1] - start:7.1f} s  {found.group(1)}", flush=True)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dvc repro in {workspace} failed (exit {proc.returncode}); run it there to see why")
    ends = [t for _, t in marks[1:]] + [start + total]
    return [(name, end - begin) for (name, begin), end in zip(marks, ends, strict=True)], total


def start_up(workspace: Path, module: str, env: dict[str, str]) -> float:
    """Best of 3: seconds for a fresh interpreter to import the stage's entry point."""
    best = float("inf")
    for _ in range(3):
        begin = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=workspace, env=env, check=True)
        best = min(best, time.perf_counter() - begin)
    return best


def stage_module(workspace: Path, stage: str) -> str | None:
    """`stages.<name>` that a stage's command runs (from dvc.yaml), or None."""
    base = stage.split("@")[0]
    text = (workspace / "dvc.yaml").read_text()
    block = text[text.find(f"\n  {base}:"):]
    found = re.search(r"python (?:-m )?stages[/.](\w+)", block)
    return f"stages.{found.group(1)}" if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="smoke", help="a profile of profiles/ (default smoke), or `default`")
    ap.add_argument("--workspace", type=Path, help="where to build it (default build/stages-<profile>)")
    args = ap.parse_args()
    workspace = args.workspace or ROOT / "build" / f"stages-{args.profile}"
    make_workspace(ROOT, workspace, None if args.profile == "default" else args.profile)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workspace.resolve() / 'mlflow.db'}"}
    stages, total = timed_repro(workspace, env)

    by_module: dict[str, float] = {}
    per_kind: dict[str, list[float]] = defaultdict(list)
    for name, seconds in stages:
        per_kind[name.split("@")[0]].append(seconds)
    print(f"\n`dvc repro`, profile {args.profile}: {total:.0f} s ({total / 60:.1f} min), {len(stages)} stages, "
          f"{os.cpu_count()} CPUs\n")
    print("| stage | runs | seconds | share | start-up (imports) |\n| --- | ---: | ---: | ---: | ---: |")
    for kind, times in sorted(per_kind.items(), key=lambda kv: -sum(kv[1])):
        module = stage_module(workspace, kind)
        if module is not None and module not in by_module:
            by_module[module] = start_up(workspace, module, env)
        up = f"{by_module[module]:.1f} s" if module is not None else "-"
        each = f" ({min(times):.0f}-{max(times):.0f} each)" if len(times) > 1 else ""
        print(f"| `{kind}` | {len(times)} | {sum(times):.0f}{each} | {sum(times) / total:.0%} | {up} |")
    starts = sum(by_module[m] for name, _ in stages if (m := stage_module(workspace, name)) is not None)
    print(f"\nstart-ups together: {starts:.0f} s of the {total:.0f} s ({starts / total:.0%})")


if __name__ == "__main__":
    main()
