"""Stage `check_params`: every section of params.yaml checked before any other stage runs (pipeline/schema.py),
and the tracking server reached.

Every stage depends on its output, a stamp whose bytes never change: a valid edit of params.yaml reruns
this check and nothing else that does not read the edited key; an invalid one stops `dvc repro` here,
naming the key, before DVC has deleted any stage's outputs."""

from __future__ import annotations

import argparse

from pipeline import tracking
from pipeline.config import ParamsError, load_params
from pipeline.io import atomic_path
from pipeline.lifecycle import guard_stage
from pipeline.schema import check_params

STAMP = "params.yaml: every section checked by stages/check_params.py\n"


def main() -> None:
    guard_stage()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="the stamp every other stage depends on")
    args = ap.parse_args()

    try:
        checked = check_params(load_params(args.params))
    except (ParamsError, FileNotFoundError) as exc:  # the message names the key and what is allowed
        raise SystemExit(f"error: {exc}") from None
    tracking_cfg = checked["tracking"]
    if tracking_cfg.enabled:  # an unreachable server fails here, before any stage has deleted its outputs
        uri = tracking.tracking_uri()
        try:
            tracking.check_reachable(uri)
        except tracking.TrackingError as exc:
            raise SystemExit(f"error: {exc}") from None
        tracking.end_orphaned_runs(uri, tracking_cfg.experiment)  # runs of stages killed with kill -9
    with atomic_path(args.out) as tmp:
        tmp.write_text(STAMP)
    print(f"{args.params}: {len(checked)} sections valid")


if __name__ == "__main__":
    main()
