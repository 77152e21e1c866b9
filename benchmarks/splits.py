"""Robust to the split? The headline deltas over several class splits, with their mean and spread.

Published generative few-shot gains move with the class split, so one split's figure is not a
claim. This runs the pipeline once per seed in a workspace of its own, one DVC experiment each
(`dvc exp run -n split-<s> -S data.split_seed=<s> -S data.exemplar_seed=<s>`): another draw of
which groups are source, calibration and one-shot, and of each one-shot class's exemplar; every
other param as in params.yaml (or the --profile). Omniglot's novel classes are its evaluation
alphabets at every seed; for a class folder the novel groups move too.

Writes, under --out: splits.csv (one row per seed, every paired delta of metrics.json: the headline
and the seen classes, against the baseline, classic and src_classic) and splits.md (per delta:
mean, standard deviation over the seeds, min and max, and in how many seeds the paired 95% CI lies
above zero), and logs one MLflow run (tag kind=analysis) with both.

    python benchmarks/splits.py --seeds 0 1 2 --workspace build/splits --out reports/splits
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline import experiments
from pipeline.config import load_params
from pipeline.io import atomic_path


def check_seeds(seeds: list[int]) -> list[int]:
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise SystemExit(f"--seeds {' '.join(map(str, seeds))}: give at least 2 distinct seeds >= 0 "
                         "(e.g. --seeds 0 1 2): a spread needs several splits")
    return seeds


def deltas(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Every paired delta of one run, flat: `<variant>/<delta>` and `<variant>/<delta>_ci95`."""
    return {f"{variant}/{key}": value for variant, m in metrics.items() for key, value in m.items()
            if key.startswith("delta_")}


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per delta: its mean, std, min and max over the seeds, and the seeds whose paired CI is above zero."""
    rows = []
    for column in frame.columns:
        if "/" not in column or column.endswith("_ci95"):
            continue
        values = frame[column].dropna()
        stats = experiments.spread(values.tolist())
        ci = frame.get(f"{column}_ci95")
        above = int(((frame[column] - ci) > 0).sum()) if ci is not None else 0
        variant, delta = column.split("/", 1)
        rows.append({"variant": variant, "delta": delta, **stats, "ci_above_zero": f"{above}/{stats['n']}"})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| variant | delta | mean | std | min | max | paired CI above zero |", "| --- " * 7 + "|"]
    lines += [f"| {r.variant} | {r.delta} | {r.mean:+.4f} | {r.std:.4f} | {r.min:+.4f} | {r.max:+.4f} | "
              f"{r.ci_above_zero} |" for r in table.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--profile", default=None, help="a profile of profiles/ (default: params.yaml as it is)")
    ap.add_argument("--workspace", type=Path, default=experiments.ROOT / "build" / "splits")
    ap.add_argument("--out", type=Path, default=experiments.ROOT / "reports" / "splits")
    ap.add_argument("--keep", action="store_true",
                    help="reuse the workspace if it exists: its experiments already run are applied, not run again")
    args = ap.parse_args()
    seeds = check_seeds(args.seeds)

    ws = experiments.workspace(args.profile, args.workspace, keep=args.keep)
    env = experiments.environment()
    rows = []
    for seed in seeds:
        result = experiments.run_experiment(ws, f"split-{seed}", {"data.split_seed": seed, "data.exemplar_seed": seed},
                                            env, reuse=args.keep)
        rows.append({"seed": seed, **deltas(result["metrics"])})
    frame = pd.DataFrame(rows)
    table = summary(frame)
    csv_path, md_path = args.out / "splits.csv", args.out / "splits.md"
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.5f")
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"Seeds {', '.join(map(str, seeds))} (data.split_seed = data.exemplar_seed), "
                       f"profile {args.profile or 'default'}\n\n" + markdown(table)
                       + "\n")
    print(table.to_string(index=False))

    experiments.log_analysis(
        env, load_params(ws / "params.yaml")["tracking"]["experiment"], "split robustness", args.profile,
        {"seeds": " ".join(map(str, seeds))},
        [({f"{r.variant}/{r.delta}/{stat}": getattr(r, stat) for r in table.itertuples(index=False)
           for stat in ("mean", "std")}, None)],
        [csv_path, md_path])


if __name__ == "__main__":
    main()
