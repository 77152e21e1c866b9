"""The data behind `dvc plots`: learning curves in long form, accuracy per variant and protocol with its CI, the
sweeps of every generator in one table."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.plots import accuracy_table, curve_table, sweep_table


def test_curve_table_has_one_row_per_logged_point() -> None:
    nan = math.nan
    histories = {"baseline": pd.DataFrame({"epoch": [0, 0, 0], "step": [9, 19, 19], "train/loss": [0.3, 0.2, nan],
                                           "val/acc_20way_seen": [nan, nan, 0.4]}),
                 "vae": pd.DataFrame({"epoch": [0], "step": [9], "train/loss": [0.25]})}
    table = curve_table(histories)
    assert list(table.columns) == ["variant", "metric", "step", "value"]
    assert table.values.tolist() == [["baseline", "train/loss", 9, 0.3], ["baseline", "train/loss", 19, 0.2],
                                     ["baseline", "val/acc_20way_seen", 19, 0.4], ["vae", "train/loss", 9, 0.25]]
    assert list(curve_table({}).columns) == ["variant", "metric", "step", "value"]


def test_accuracy_table_gives_the_ci_as_low_and_high() -> None:
    metrics = {"baseline": {"acc_20way": 0.4, "acc_20way_ci95": 0.01}, "vae": {"acc_20way": 0.8, "acc_5way": 0.9}}
    table = accuracy_table(metrics, ["acc_20way", "acc_5way"])
    assert table[["variant", "protocol"]].values.tolist() == [["baseline", "20way"], ["vae", "20way"], ["vae", "5way"]]
    assert table.loc[0, ["low", "high"]].tolist() == pytest.approx([0.39, 0.41])
    assert table.loc[2, ["low", "high"]].tolist() == pytest.approx([0.9, 0.9])  # no CI recorded


def test_sweep_table_puts_every_generator_in_one_table() -> None:
    sweeps = {g: pd.DataFrame({"generator": g, "n_synthetic": [0, 20], "acc_20way": [0.7, acc],
                               "acc_20way_ci95": [0.01, 0.02]}) for g, acc in (("vae", 0.8), ("gan", 0.85))}
    table = sweep_table(sweeps, "acc_20way")
    assert list(table.columns) == ["generator", "n_synthetic", "accuracy", "low", "high"]
    assert table[["generator", "n_synthetic"]].values.tolist() == [["vae", 0], ["vae", 20], ["gan", 0], ["gan", 20]]
    assert table.loc[3, ["accuracy", "low", "high"]].tolist() == pytest.approx([0.85, 0.83, 0.87])
    assert list(sweep_table({}, "acc_20way").columns) == ["generator", "n_synthetic", "accuracy", "low", "high"]
