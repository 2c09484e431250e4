"""The study's figures (matplotlib, Agg: no display needed), each written as PNG and SVG.

Legends sit outside the axes, so they never cover data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

COLORS = {
    "none": "#7f7f7f",
    "batch": "#d62728",
    "batch-renorm": "#ff7f0e",
    "ghost-batch": "#e377c2",
    "group": "#1f77b4",
    "instance": "#2ca02c",
    "layer": "#9467bd",
    "rms": "#8c564b",
    "frn": "#17becf",
}
PANELS_PER_ROW = 4


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, png_path: str) -> list[str]:
    """Writes the figure as PNG and as SVG beside it; returns both paths."""
    svg_path = os.path.splitext(png_path)[0] + ".svg"
    fig.savefig(png_path, bbox_inches="tight")
    fig.savefig(svg_path, bbox_inches="tight")
    return [png_path, svg_path]


def batch_size_figure(rows: Sequence[dict[str, Any]], path: str, dataset: str) -> list[str]:
    """Test error (%) against batch size (log-2 axis, largest batch on the left as in Wu & He 2018, Figure 1),
    one line per norm, error bars = the spread (sample std) over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    for norm in norms:
        cells = sorted((r for r in rows if r["norm"] == norm), key=lambda r: r["batch_size"])
        sizes = [r["batch_size"] for r in cells]
        errors = [100 * (1 - r["test_accuracy_mean"]) for r in cells]
        spread = [100 * r["test_accuracy_std"] for r in cells]
        ax.errorbar(sizes, errors, yerr=spread, marker="o", capsize=3, label=norm, color=COLORS.get(norm))
    sizes = sorted({r["batch_size"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    if len(sizes) > 1:
        ax.set_xlim(max(sizes) * 1.3, min(sizes) / 1.3)  # Wu & He: batch size shrinking to the right
    ax.set_xlabel("batch size (images per step, log 2)")
    ax.set_ylabel("test error (%), mean ± std over seeds")
    name = dataset if len(dataset) < 40 else "…" + dataset[-38:]
    ax.set_title(f"Test error against batch size ({name})")
    ax.grid(True, alpha=0.3)
    ax.legend(title="normalization", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    paths = _save(fig, path)
    plt.close(fig)
    return paths


def _batch_colors(sizes: Sequence[int]) -> dict[int, Any]:
    """Small batches dark, large batches light (one sequential colour map)."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    if len(sizes) == 1:
        return {sizes[0]: cmap(0.3)}
    return {size: cmap(0.85 * i / (len(sizes) - 1)) for i, size in enumerate(sorted(sizes))}


def training_curves_figure(records: Sequence[dict[str, Any]], path: str) -> list[str]:
    """One panel per norm: the running training loss against images seen, one line per batch size (mean over
    seeds); with two or more epochs, a second row of panels gives the test error (%) after each epoch against
    images seen. With one epoch that row would hold a single point per line, so it is left out (the batch-size
    figure has those numbers)."""
    plt = _pyplot()
    sizes = sorted({r["batch_size"] for r in records})
    norms = list(dict.fromkeys(r["norm"] for r in records))
    epochs = max(len(r["history"]["test_accuracy"]) for r in records)
    metrics = ["loss", "error"] if epochs > 1 else ["loss"]
    columns = min(len(norms), PANELS_PER_ROW)
    blocks = math.ceil(len(norms) / columns)
    rows = blocks * len(metrics)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.3 * columns + 1.2, 2.9 * rows), dpi=110, squeeze=False, sharex=True, sharey="row"
    )
    colors = _batch_colors(sizes)
    for index, norm in enumerate(norms):
        block, column = divmod(index, columns)
        for m, metric in enumerate(metrics):
            ax = axes[block * len(metrics) + m][column]
            for size in sizes:
                runs = [r for r in records if r["norm"] == norm and r["batch_size"] == size]
                if not runs:
                    continue
                if metric == "loss":
                    x, y = _mean_curve(runs)
                    if len(x):
                        marker = "o" if len(x) == 1 else None  # a one-step run: still visible
                        ax.plot(x, y, color=colors[size], label=f"batch {size}", linewidth=1.2, marker=marker)
                else:
                    per_epoch = runs[0]["train_images"]
                    n = min(len(r["history"]["test_accuracy"]) for r in runs)
                    x = per_epoch * np.arange(1, n + 1)
                    y = 100 * (1 - np.mean([r["history"]["test_accuracy"][:n] for r in runs], axis=0))
                    ax.plot(x, y, color=colors[size], marker="o", markersize=3, label=f"batch {size}")
            ax.set_title(norm if m == 0 else f"{norm}: test error", fontsize=10)
            ax.grid(True, alpha=0.3)
            if column == 0:
                ax.set_ylabel("training loss (running)" if metric == "loss" else "test error (%)")
            if block == blocks - 1 and m == len(metrics) - 1:
                ax.set_xlabel("images seen")
    for index in range(len(norms), blocks * columns):  # unused panels in the last block
        block, column = divmod(index, columns)
        for m in range(len(metrics)):
            axes[block * len(metrics) + m][column].set_visible(False)
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    order = sorted(range(len(labels)), key=lambda i: int(labels[i].split()[-1]))
    fig.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
        title="batch size",
    )
    fig.suptitle("Training curves against images seen (mean over seeds)")
    fig.tight_layout()
    paths = _save(fig, path)
    plt.close(fig)
    return paths


def _mean_curve(runs: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The seeds' mean running loss at the recorded points; x is images seen (older records: epochs x images)."""
    length = min(len(r["curve"]["loss"]) for r in runs)
    if not length:
        return np.array([]), np.array([])
    curve = runs[0]["curve"]
    if curve.get("images"):
        x = np.asarray(curve["images"][:length], dtype=float)
    else:
        x = np.asarray(curve["epoch"][:length], dtype=float) * runs[0]["train_images"]
    y = np.mean([r["curve"]["loss"][:length] for r in runs], axis=0)
    return x, y
