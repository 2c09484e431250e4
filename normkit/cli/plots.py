"""The study's figures (matplotlib, Agg: no display needed)."""

from __future__ import annotations

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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def batch_size_figure(rows: Sequence[dict[str, Any]], path: str, dataset: str) -> str:
    """Test accuracy against batch size (log-2 axis), one line per norm, error bars = spread over seeds.

    The figure Wu & He (2018, Figure 1) drew for ImageNet (as error; here accuracy).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    for norm in norms:
        cells = sorted((r for r in rows if r["norm"] == norm), key=lambda r: r["batch_size"])
        sizes = [r["batch_size"] for r in cells]
        means = [100 * r["test_accuracy_mean"] for r in cells]
        spread = [100 * r["test_accuracy_std"] for r in cells]
        ax.errorbar(sizes, means, yerr=spread, marker="o", capsize=3, label=norm, color=COLORS.get(norm))
    sizes = sorted({r["batch_size"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.set_xlabel("batch size (images per step, log 2)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    name = dataset if len(dataset) < 40 else "…" + dataset[-38:]
    ax.set_title(f"Test accuracy against batch size ({name})")
    ax.grid(True, alpha=0.3)
    ax.legend(title="normalization", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves_figure(records: Sequence[dict[str, Any]], path: str) -> str:
    """Per batch size: the running training loss through training (top) and test accuracy per epoch (bottom),
    one line per norm, averaged over seeds."""
    plt = _pyplot()
    sizes = sorted({r["batch_size"] for r in records})
    norms = list(dict.fromkeys(r["norm"] for r in records))
    fig, axes = plt.subplots(2, len(sizes), figsize=(3.2 * len(sizes) + 1, 6), dpi=110, squeeze=False)
    for col, size in enumerate(sizes):
        top, bottom = axes[0][col], axes[1][col]
        for norm in norms:
            runs = [r for r in records if r["norm"] == norm and r["batch_size"] == size]
            if not runs:
                continue
            color = COLORS.get(norm)
            length = min(len(r["curve"]["epoch"]) for r in runs)
            if length:
                x = runs[0]["curve"]["epoch"][:length]
                loss = np.mean([r["curve"]["loss"][:length] for r in runs], axis=0)
                top.plot(x, loss, color=color, label=norm)
            epochs = np.arange(1, len(runs[0]["history"]["test_accuracy"]) + 1)
            acc = np.mean([r["history"]["test_accuracy"] for r in runs], axis=0) * 100
            bottom.plot(epochs, acc, marker="o", color=color, label=norm)
        n_epochs = max(len(r["history"]["test_accuracy"]) for r in records)
        bottom.set_xlim(0.5, n_epochs + 0.5)
        bottom.set_xticks(range(1, n_epochs + 1))
        top.set_title(f"batch {size}")
        top.set_xlabel("epoch")
        bottom.set_xlabel("epoch")
        top.grid(True, alpha=0.3)
        bottom.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("training loss (running mean)")
    axes[1][0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, title="normalization")
    fig.suptitle("Training curves (mean over seeds)")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path)
    plt.close(fig)
    return path
