"""When does generative augmentation pay? The generator's gain over classic against how many source groups there are.

Runs the `source-sweep` profile (profiles/source-sweep.yaml) in a workspace of its own, one DVC
experiment per count of source groups (`dvc exp run -n source-<n> -S data.roles.source=<n>`): the
generator and the reference embedding train on that many groups, the classifiers train without
(`classic`, `gan`) and with (`src_classic`, `src_gan`) their classes. The one-shot, calibration and
novel classes are the same at every count: the rule gives `calibration` and `train` their groups
first, the count only decides how many of the groups after them are `source`, and `data.rest:
unused` leaves the rest out. So each point differs from the next only by source classes.

Writes, under --out:
- source_groups.csv: one row per count, with each generator variant's paired gain over its
  control (`gan` over `classic`, `src_gan` over `src_classic`) on the novel classes (20-way) and
  on the one-shot classes themselves (seen), with 95% CIs, and the accuracies behind them;
- source_groups.png: those gains against the count;
and logs one MLflow run (tag kind=analysis) with both files and the gains as metrics, step = count.
`dvc exp show` in the workspace lists the experiments. Each point is one full pipeline run (about
12 minutes on 2 cores with the profile's one generator).

    python benchmarks/source_groups.py --counts 2 5 10 20 --workspace build/source-sweep \
        --out reports/source_groups
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import NullFormatter

from pipeline import experiments
from pipeline.config import load_params, section
from pipeline.io import atomic_path
from pipeline.variants import VariantConfig

ROOT = experiments.ROOT
PROFILE = "source-sweep"
PROTOCOLS = {"20way": "novel classes, 20-way", "seen": "one-shot classes (seen), 20-way"}


def check_counts(counts: list[int]) -> list[int]:
    """Counts of source groups: at least one, each >= 1, strictly increasing (each point adds groups)."""
    if not counts or any(n < 1 for n in counts) or any(b <= a for a, b in itertools.pairwise(counts)):
        raise SystemExit(f"--counts {' '.join(map(str, counts))}: give increasing counts of source groups, "
                         "each at least 1 (e.g. --counts 2 5 10 20)")
    return counts


def gain_pairs(variants: dict[str, VariantConfig]) -> list[tuple[str, str]]:
    """(generator variant, its control) for each variant that trains on synthetic drawings: the variant with
    the same sources but for the drawings (`classic`-like with or without the source classes)."""
    pairs = []
    for name, v in variants.items():
        if v.synthetic == "none":
            continue
        control = [c for c, w in variants.items() if w.synthetic == "none" and w.classic == v.classic
                   and set(w.train_on) == set(v.train_on) - {"synthetic"}]
        if not control:
            raise SystemExit(f"profiles/{PROFILE}.yaml: variant {name!r} has no control (the same sources without "
                             "`synthetic`) to measure its gain against")
        pairs.append((name, control[0]))
    return pairs


def row(count: int, metrics: dict[str, dict[str, float]], manifest: dict, pairs: list[tuple[str, str]]) -> dict:
    """One point of the curve from an experiment's metrics.json and manifest.json."""
    out: dict[str, float | int | str] = {"n_source_groups": count,
                                         "n_source_classes": manifest["roles"]["source"]["classes"]}
    for variant, control in pairs:
        for key in PROTOCOLS:
            delta = f"delta_{key}_vs_{control}"
            out[f"acc_{key}_{variant}"] = metrics[variant][f"acc_{key}"]
            out[f"acc_{key}_{control}"] = metrics[control][f"acc_{key}"]
            if delta in metrics[variant]:
                out[f"gain_{key}_{variant}"] = metrics[variant][delta]
                out[f"gain_{key}_{variant}_ci95"] = metrics[variant][f"{delta}_ci95"]
            else:  # the control is not in evaluation.compare_with: the difference of the means, no paired CI
                out[f"gain_{key}_{variant}"] = metrics[variant][f"acc_{key}"] - metrics[control][f"acc_{key}"]
                out[f"gain_{key}_{variant}_ci95"] = float("nan")
    return out


def figure(frame: pd.DataFrame, pairs: list[tuple[str, str]]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(10, 3.8), sharey=True)
    for ax, (key, title) in zip(axes, PROTOCOLS.items(), strict=True):
        for variant, control in pairs:
            ax.errorbar(frame["n_source_groups"], frame[f"gain_{key}_{variant}"],
                        yerr=frame[f"gain_{key}_{variant}_ci95"], marker="o", capsize=3,
                        label=f"{variant} - {control}")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(frame["n_source_groups"], [str(n) for n in frame["n_source_groups"]])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("source groups (the generator's data)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gain over the control (paired, 95% CI)")
    axes[0].legend()
    fig.suptitle("When does generative augmentation pay?")
    fig.tight_layout()
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[2, 5, 10, 20], help="source groups per point")
    ap.add_argument("--workspace", type=Path, default=ROOT / "build" / PROFILE)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "source_groups")
    ap.add_argument("--keep", action="store_true",
                    help="reuse the workspace if it exists: its experiments already run are applied, not run again")
    args = ap.parse_args()
    counts = check_counts(args.counts)

    ws = experiments.workspace(PROFILE, args.workspace, keep=args.keep)
    params = load_params(ws / "params.yaml")
    variants = {v: section(params, VariantConfig, f"variants.{v}") for v in params["variants"]}
    pairs = gain_pairs(variants)
    env = experiments.environment()

    rows = []
    for count in counts:
        result = experiments.run_experiment(ws, f"source-{count}", {"data.roles.source": count}, env,
                                            reuse=args.keep)
        rows.append(row(count, result["metrics"], result["manifest"], pairs))
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items() if k.startswith("gain")})

    frame = pd.DataFrame(rows)
    csv_path, png_path = args.out / "source_groups.csv", args.out / "source_groups.png"
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.5f")
    with atomic_path(png_path) as tmp:
        figure(frame, pairs).savefig(tmp, dpi=100, format="png")
    print(frame.to_string(index=False))

    experiments.log_analysis(
        env, params["tracking"]["experiment"], "source groups sweep", PROFILE, {"counts": " ".join(map(str, counts))},
        [({k: v for k, v in r.items() if k.startswith("gain")}, int(r["n_source_groups"])) for r in rows],
        [csv_path, png_path])
    print(f"{csv_path}, {png_path}; MLflow experiment {params['tracking']['experiment']!r}")


if __name__ == "__main__":
    main()
