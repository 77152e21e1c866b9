"""Does two-process DDP train as well as one process? Accuracy and wall time of both at the same global batch.

Runs the pipeline once per (mode, seed) in a workspace of its own, one DVC experiment each:
  - `one`: params as they are (one process, `trainer.devices: 1`);
  - `ddp`: `trainer.strategy: ddp`, `trainer.devices: 2`, one torch thread per process, and every per-process
    batch halved (`siamese.batch_classes`, `reference.batch_classes`, the generators' `batch_size`), so that the
    global batch, the step count and the learning rate are those of `one`;
each with `siamese.seed` (and `siamese.max_steps`, longer than the tiny profile's 30) set. Prints, per variant,
acc_20way of both modes per seed and the paired difference (ddp - one) over the seeds, and each mode's wall time.

    python benchmarks/distributed.py --profile tiny --steps 300 --seeds 0 1 2 --episodes 500
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from pipeline import experiments
from pipeline.profile import profile_params


def mode_settings(params: dict) -> dict[str, dict[str, object]]:
    """The `-S` settings of each mode, every key spelled in both: an experiment starts from the workspace's params,
    which hold the previous experiment's. `one`: the params' own values; `ddp`: 2 CPU processes, one thread
    each, every per-process batch halved."""
    one: dict[str, object] = {"trainer.strategy": params["trainer"]["strategy"],
                              "trainer.devices": params["trainer"]["devices"],
                              "trainer.num_threads": params["trainer"]["num_threads"],
                              "siamese.batch_classes": params["siamese"]["batch_classes"],
                              "reference.batch_classes": params["reference"]["batch_classes"]}
    for name in params["generator"]["enabled"]:
        one[f"generator.{name}.batch_size"] = params["generator"][name]["batch_size"]
    ddp = {key: value // 2 if "batch" in key else value for key, value in one.items()}  # type: ignore[operator]
    ddp.update({"trainer.strategy": "ddp", "trainer.devices": 2, "trainer.num_threads": 1})
    return {"one": one, "ddp": ddp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny", help="a profile of profiles/ (default: tiny)")
    ap.add_argument("--steps", type=int, default=300, help="siamese.max_steps of every run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="siamese.seed values, paired across modes")
    ap.add_argument("--episodes", type=int, help="evaluation.n_episodes of every run (default: the profile's); "
                    "more episodes, a narrower CI per run")
    ap.add_argument("--workspace", type=Path, default=experiments.ROOT / "build" / "distributed")
    ap.add_argument("--keep", action="store_true", help="reuse the workspace and the experiments already run")
    args = ap.parse_args()

    ws = experiments.workspace(args.profile, args.workspace, keep=args.keep)
    env = experiments.environment()
    settings = mode_settings(profile_params(experiments.ROOT / "params.yaml", args.profile))
    rows, seconds = [], {}
    for seed in args.seeds:
        for mode, extra in settings.items():
            name = f"{mode}-s{seed}"
            reused = args.keep and name in experiments.existing(ws, env)
            start = time.perf_counter()
            episodes = {} if args.episodes is None else {"evaluation.n_episodes": args.episodes}
            result = experiments.run_experiment(ws, name, {"siamese.seed": seed, "siamese.max_steps": args.steps,
                                                           **episodes, **extra}, env, reuse=args.keep)
            if not reused:
                seconds[name] = time.perf_counter() - start
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
    # Each experiment retrains what its settings change (the first also prepares the data): compare like with like.
    print("wall time of each experiment run here: " + ", ".join(f"{n} {t:.0f} s" for n, t in seconds.items()))


if __name__ == "__main__":
    main()
