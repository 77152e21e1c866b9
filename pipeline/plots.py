"""Pictures a person would rather look at than read: learning curves and per-variant accuracy."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure


def learning_curves(histories: dict[str, pd.DataFrame]) -> Figure:
    """One panel per logged metric (train loss, seen-class validation accuracy), one line per variant."""
    keys = [k for k in ("train/loss", "val/acc_20way_seen") if any(k in h for h in histories.values())]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(5 * max(len(keys), 1), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        for variant, h in histories.items():
            if key in h:
                points = h[["step", key]].dropna()
                ax.plot(points["step"], points[key], label=variant, marker="o" if key.startswith("val") else None,
                        markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def accuracy_bars(metrics: dict[str, dict[str, float]], keys: list[str]) -> Figure:
    """Grouped bars of accuracy with 95% CI per variant and protocol."""
    variants = list(metrics)
    fig, ax = plt.subplots(figsize=(1.6 * len(variants) * len(keys) / 2 + 3, 3.8))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        xs = [i + j * width for i in range(len(variants))]
        ys = [metrics[v].get(key, float("nan")) for v in variants]
        es = [metrics[v].get(f"{key}_ci95", 0.0) for v in variants]
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=key)
    ax.set_xticks([i + width * (len(keys) - 1) / 2 for i in range(len(variants))], variants)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_curve(sweeps: dict[str, pd.DataFrame], key: str) -> Figure:
    """Headline accuracy (with 95% CI) against synthetic drawings per exemplar, one line per generator."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for generator, frame in sweeps.items():
        ax.errorbar(frame["n_synthetic"], frame[key], yerr=frame[f"{key}_ci95"], marker="o", capsize=3,
                    label=generator)
    ax.set_xlabel("synthetic drawings per exemplar")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def curve_table(histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The learning curves in long form for `dvc plots`: columns variant, metric, step, value (one row a point)."""
    frames = []
    for variant, h in histories.items():
        keys = [k for k in h.columns if k not in ("step", "epoch")]
        points = h.melt(id_vars="step", value_vars=keys, var_name="metric").dropna(subset=["value"])
        frames.append(points.assign(variant=variant))
    columns = ["variant", "metric", "step", "value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def accuracy_table(metrics: dict[str, dict[str, float]], keys: list[str]) -> pd.DataFrame:
    """Accuracy per variant and protocol for `dvc plots`, with its 95% CI as low and high."""
    rows = [{"variant": v, "protocol": k.removeprefix("acc_"), "accuracy": m[k],
             "low": m[k] - m.get(f"{k}_ci95", 0.0), "high": m[k] + m.get(f"{k}_ci95", 0.0)}
            for v, m in metrics.items() for k in keys if k in m]
    return pd.DataFrame(rows, columns=["variant", "protocol", "accuracy", "low", "high"])


def sweep_table(sweeps: dict[str, pd.DataFrame], key: str) -> pd.DataFrame:
    """The sweeps for `dvc plots`, every generator in one table (a line each): columns generator, n_synthetic,
    accuracy (`key`), and its 95% CI as low and high."""
    columns = ["generator", "n_synthetic", "accuracy", "low", "high"]
    frames = [pd.DataFrame({"generator": generator, "n_synthetic": frame["n_synthetic"], "accuracy": frame[key],
                            "low": frame[key] - frame[f"{key}_ci95"], "high": frame[key] + frame[f"{key}_ci95"]})
              for generator, frame in sweeps.items()]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
