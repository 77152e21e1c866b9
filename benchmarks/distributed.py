"""Does two-process DDP train as well as one process? Accuracy and wall time of both at the same global batch.

Runs the pipeline once per (mode, seed) in a workspace of its own, one DVC experiment each:
  - `one`: params as they are (one process, `trainer.devices: 1`);
  - `ddp`: `trainer.strategy: ddp`, `trainer.devices: 2`, one torch thread per process, and every per-process
    batch halved (`siamese.batch_classes`, `reference.batch_classes`, the generators' `batch_size`), so that the
    global batch, the step count and the learning rate are those of `one`;
each with `siamese.seed` (and `siamese.max_steps`, longer than the tiny profile's 30) set. Prints, per variant,
acc_20way of both modes per seed and the paired difference (ddp - one) over the seeds, and each mode's wall time.

    python benchmarks/distributed.py --profile tiny --steps 300 --seeds 0 1 --workspace build/distributed
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from pipeline import experiments
from pipeline.config import load_params


def ddp_settings(params: dict) -> dict[str, object]:
    """The `-S` settings of the two-process run: DDP on 2 CPU processes, each per-process batch halved."""
    settings: dict[str, object] = {"trainer.strategy": "ddp", "trainer.devices": 2, "trainer.num_threads": 1,
                                   "siamese.batch_classes": params["siamese"]["batch_classes"] // 2,
                                   "reference.batch_classes": params["reference"]["batch_classes"] // 2}
    for name in params["generator"]["enabled"]:
        settings[f"generator.{name}.batch_size"] = params["generator"][name]["batch_size"] // 2
    return settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny", help="a profile of profiles/ (default: tiny)")
    ap.add_argument("--steps", type=int, default=300, help="siamese.max_steps of every run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="siamese.seed values, paired across modes")
    ap.add_argument("--workspace", type=Path, default=experiments.ROOT / "build" / "distributed")
    ap.add_argument("--keep", action="store_true", help="reuse the workspace and the experiments already run")
    args = ap.parse_args()

    ws = experiments.workspace(args.profile, args.workspace, keep=args.keep)
    env = experiments.environment()
    params = load_params(ws / "params.yaml")
    rows, seconds = [], {"one": 0.0, "ddp": 0.0}
    for seed in args.seeds:
        for mode, extra in (("one", {}), ("ddp", ddp_settings(params))):
            start = time.perf_counter()
            result = experiments.run_experiment(ws, f"{mode}-s{seed}", {"siamese.seed": seed,
                                                                          "siamese.max_steps": args.steps, **extra},
                                                env, reuse=args.keep)
            seconds[mode] += time.perf_counter() - start
            for variant, m in result["metrics"].items():
                rows.append({"seed": seed, "mode": mode, "variant": variant, "acc_20way": m["acc_20way"],
                             "ci95": m["acc_20way_ci95"]})
    frame = pd.DataFrame(rows)
    wide = frame.pivot_table(index=["variant", "seed"], columns="mode", values="acc_20way")
    wide["ddp - one"] = wide["ddp"] - wide["one"]
    print(f"\nacc_20way, profile {args.profile}, siamese.max_steps {args.steps}, one process vs two DDP processes "
          "at the same global batch:\n")
    print(wide.round(4).to_string())
    paired = wide.groupby(level="variant")["ddp - one"].agg(["mean", "std", "min", "max"])
    print("\npaired difference over the seeds (ddp - one):\n")
    print(paired.round(4).to_string())
    ci = frame.groupby("mode")["ci95"].mean()
    print(f"\nmean 95% CI over episodes of one run: one {ci['one']:.3f}, ddp {ci['ddp']:.3f}")
    print(f"wall time of the {len(args.seeds)} runs per mode: one process {seconds['one']:.0f} s, "
          f"two DDP processes {seconds['ddp']:.0f} s")


if __name__ == "__main__":
    main()
