"""The report's figures (matplotlib, Agg), each returned as an inline ``data:`` URI so the page needs no files.

Figure 1 itself is :func:`framework.table_render.figure1` (the same figure `make table2` writes, with the
CIs as error bars); here: learning curves and time / memory per method.
"""
from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 90


def data_uri(fig) -> str:
    """The figure as a base64 PNG ``data:`` URI; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def learning_curves(frame: pd.DataFrame, model: str):
    """One panel per (task, method) of ``model``: validation (solid) and, where recorded, test (dashed) per
    epoch, one colour per seed; a star marks the test score at the best validation epoch."""
    frame = frame[frame["model"] == model]
    tasks, methods = sorted(frame["task"].unique()), list(dict.fromkeys(frame["method"]))
    fig, axes = plt.subplots(len(tasks), len(methods), figsize=(3.2 * len(methods), 2.4 * len(tasks)),
                             squeeze=False, sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, task in enumerate(tasks):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            cell = frame[(frame["task"] == task) & (frame["method"] == method)]
            if cell.empty:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", color="grey")
            for k, (seed, run) in enumerate(cell.groupby("seed", sort=True)):
                colour = colours[k % len(colours)]
                run = run.sort_values("epoch")
                ax.plot(run["epoch"], run["val"], "-o", ms=3, color=colour, label=f"seed {seed} val")
                if run["test"].notna().any():
                    ax.plot(run["epoch"], run["test"], "--", color=colour, label=f"seed {seed} test")
                best = run.iloc[0]
                if pd.notna(best["best_epoch"]) and pd.notna(best["test_at_best"]):
                    ax.plot(best["best_epoch"], best["test_at_best"], "*", ms=9, color=colour)
            metric = cell["metric"].iloc[0] if not cell.empty else ""
            ax.set_title(f"{task} · {method}", fontsize=8)
            ax.set_ylabel(metric, fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if i == len(tasks) - 1:
                ax.set_xlabel("epoch", fontsize=7)
    fig.suptitle(f"{model}: validation per epoch (solid), test per epoch where recorded (dashed), "
                 "test at the best validation epoch (star); one colour per seed", fontsize=9)
    fig.tight_layout()
    return fig


def speed_and_memory_figure(frame: pd.DataFrame):
    """Median train samples/s and the largest peak memory per method (over tasks), one bar group per model."""
    per_method = frame.groupby(["model", "method"], sort=False).agg(
        speed=("train_samples_per_s", "median"), peak=("peak_gib", "max")).reset_index()
    names = [f"{m} {l}" for m, l in zip(per_method["model"], per_method["method"])]
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.6))
    ax_speed.barh(names, per_method["speed"], color="tab:blue")
    ax_speed.set_xlabel("train samples/s (median over tasks and seeds)")
    ax_mem.barh(names, per_method["peak"], color="tab:orange")
    ax_mem.set_xlabel("peak memory, GiB (largest over runs)")
    for ax in (ax_speed, ax_mem):
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(labelsize=8)
    ax_mem.set_yticklabels([])
    fig.tight_layout()
    return fig
