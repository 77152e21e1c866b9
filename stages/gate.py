"""The regression gate (`make gate`): a run's metrics against the floors and the committed reference of its profile.

Trains nothing; reads files only. Run from the project root: `gate.reference` in params is relative to it,
so a workspace built by `make smoke` is gated against the reference committed here, not its copy.
Prints a table (metric, reference, now, change, tolerance, verdict) and writes the report a reviewer reads.

Exit status: 0 pass, 1 a metric fell beyond its tolerance, fell below a floor or is missing, 2 bad input.
`--write-reference` instead copies the metrics to the reference file: refresh it on purpose, commit the diff.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.config import load_params, section
from pipeline.gate import GateConfig, Metrics, gate_text, report_markdown, run_gate, validate_metrics
from pipeline.io import atomic_path, read_json, write_json
from pipeline.lifecycle import guard_stage
from pipeline.profile import profile_params

EXIT_FAIL, EXIT_BAD_INPUT = 1, 2


def read_metrics(path: Path, fix: str) -> Metrics:
    """A metrics JSON file, checked; errors name the file and `fix`."""
    return validate_metrics(read_json(path, fix), str(path), fix)


def pictures(params: dict, reports: Path, report: Path) -> list[tuple[str, str]]:
    """Captions and paths, relative to the report, of the evaluate and synthesize stages' pictures."""
    named = [("Learning curves", "curves.png"), ("Accuracy per variant", "accuracy.png"),
             ("Accuracy against synthetic drawings per exemplar, per generator", "sweep.png")]
    named += [(f"Samples of the {g} generator (each row: an exemplar, then its synthetic drawings)", f"samples_{g}.png")
              for g in params.get("generator", {}).get("enabled", [])]
    return [(caption, os.path.relpath(reports / name, report.parent)) for caption, name in named]


def main() -> int:
    guard_stage()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", type=Path, help="params.yaml, with profiles/ beside it")
    ap.add_argument("--profile", help="lay profiles/<name>.yaml over the params (the run came from `make <name>`)")
    ap.add_argument("--metrics", required=True, type=Path, help="the run's metrics JSON (reports/metrics.json)")
    ap.add_argument("--report", type=Path, help="where to write the Markdown report (beside the run's pictures)")
    ap.add_argument("--write-reference", action="store_true",
                    help="copy the metrics to the profile's reference file instead of gating them")
    args = ap.parse_args()

    params = profile_params(args.params, args.profile) if args.profile is not None else load_params(args.params)
    cfg = section(params, GateConfig, "gate")
    reference = Path(cfg.reference)
    now = read_metrics(args.metrics, "regenerate it: `dvc repro` (`make smoke` for the quick profile), "
                                     "or restore the committed one: `git checkout -- reports/metrics.json`")
    if args.write_reference:
        write_json(reference, now)
        print(f"{reference}: written from {args.metrics}; review and commit it: git diff {reference}")
        return 0

    ref = read_metrics(reference, "create it from a run you trust with `make reference`, then commit it")
    params_name = str(args.params) + (f" + profiles/{args.profile}.yaml" if args.profile is not None else "")
    result = run_gate(now, ref, cfg, str(args.metrics), params_name)
    print(f"== gate: {args.metrics} (profile {args.profile or 'default'})")
    print(gate_text(result))
    if args.report is not None:
        text = report_markdown(now, result, pictures(params, args.metrics.parent, args.report))
        with atomic_path(args.report) as tmp:
            tmp.write_text(text)
        print(f"report: {args.report}")
    return 0 if result.passed else EXIT_FAIL


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as exc:  # bad input: say what and how to fix it, without a traceback
        print(f"gate: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
