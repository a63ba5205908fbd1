"""The shared figures build from small synthetic DataFrames (the shapes pipeline.logs/collect give), label
both axes, draw seed bands only where there are two or more seeds, and fail clearly on missing columns."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from mstlib import plots
from mstlib.errors import MstError


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _logs(variants=("dense", "mst"), seeds=(0, 1, 2), steps=20):
    rng = np.random.default_rng(0)
    rows = []
    for v in variants:
        for s in seeds:
            for t in range(steps):
                rows.append({"variant": v, "seed": s, "run_id": f"{v}{s}", "step": t * 10,
                             "loss": 5.0 - 0.1 * t + rng.normal(0, 0.05),
                             "val_loss": (5.0 - 0.1 * t) if t % 5 == 0 else np.nan,
                             "density": 1.0 if v == "dense" else max(0.1, 1 - t / 10),
                             "attn_density": 1.0})
    return pd.DataFrame(rows)


def _results(variants=("dense", "mst", "rigl"), seeds=(0, 1, 2)):
    rows = []
    for i, v in enumerate(variants):
        for s in seeds:
            rows.append({"variant": v, "seed": s, "metrics.final_val_loss": 3.0 + 0.1 * i + 0.01 * s,
                         "metrics.flops_total": 1e15 / (i + 1), "eval.rte.acc": 0.5 + 0.02 * i + 0.01 * s})
    return pd.DataFrame(rows)


def _labelled(ax):
    assert ax.get_xlabel() and ax.get_ylabel()
    assert ax.figure is not None
    ax.figure.canvas.draw()  # render fully: layout errors surface here


def test_loss_curves_with_bands():
    ax = plots.loss_curves(_logs(), y="loss", smooth=3)
    _labelled(ax)
    assert len(ax.lines) == 2
    assert len(ax.collections) == 2  # one band per variant (3 seeds)
    assert "training loss" in ax.get_ylabel()


def test_val_loss_drops_missing_steps_and_single_seed_has_no_band():
    ax = plots.loss_curves(_logs(seeds=(0,)))
    _labelled(ax)
    assert len(ax.collections) == 0
    assert len(ax.lines[0].get_xdata()) == 4  # only the steps with a validation loss


def test_band_table_interval_contains_mean():
    b = plots.band_table(_logs(), "step", "loss")
    assert set(b.columns) >= {"variant", "step", "mean", "lo", "hi", "n"}
    assert (b["lo"] <= b["mean"]).all() and (b["mean"] <= b["hi"]).all()
    assert set(b["n"]) == {3}


def test_density_curves():
    ax = plots.density_curves(_logs())
    _labelled(ax)
    assert ax.get_ylim()[1] == pytest.approx(1.05)
    _labelled(plots.density_curves(_logs(), attention=True))


def test_flops_vs_quality():
    ax = plots.flops_vs_quality(_results(), reference="dense")
    _labelled(ax)
    assert ax.get_xscale() == "log"
    assert "FLOPs" in ax.get_xlabel()


def test_metric_bars_both_styles_into_given_axes():
    fig, axes = plt.subplots(1, 2)
    a = plots.metric_bars(_results(), "eval.rte.acc", references={"chance": 0.5, "majority": 0.53}, ax=axes[0],
                          highlight="mst")
    b = plots.metric_bars(_results(), "metrics.final_val_loss", style="point", ax=axes[1],
                          order=["mst", "dense", "rigl"])
    for ax in (a, b):
        _labelled(ax)
    assert [t.get_text().split(" ")[0] for t in b.get_yticklabels()] == ["mst", "dense", "rigl"]
    with pytest.raises(MstError):
        plots.metric_bars(_results(), "eval.rte.acc", style="pie")


def test_summarise():
    s = plots.summarise(_results(), ["metrics.final_val_loss"])
    assert list(s["variant"]) == ["dense", "mst", "rigl"]
    assert s["half"].notna().all() and (s["n"] == 3).all()


def test_missing_column_and_empty_frame_are_clear_errors():
    with pytest.raises(MstError, match="lacks column"):
        plots.loss_curves(_logs().drop(columns=["val_loss"]))
    with pytest.raises(MstError, match="empty"):
        plots.flops_vs_quality(_results().iloc[0:0])
