"""`normkit compare --backend all`: the same study on jax, tensorflow and torch, side by side.

Keras fixes its backend at import, so each backend runs in its own `python -m normkit compare` process with
KERAS_BACKEND set and --out <out>/<backend> (each resumable on its own). Then backends.md and backends.csv put
each (norm, batch size)'s test accuracy per backend side by side, and say run by run whether the backends'
numbers are bit-identical: same seed and same data, but different kernels and summation orders, so after the
first float32 rounding difference the trajectories part.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from normkit.cli import options
from normkit.cli.compare import write_atomic
from normkit.cli.errors import FAILURE, INTERRUPTED, CLIError

BACKENDS = options.BACKEND_CHOICES


def child_argv(argv: Sequence[str], backend: str, out: str) -> list[str]:
    """`argv` with its --backend and --out replaced (the compare parser takes no abbreviations)."""
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in ("--backend", "--out"):
            skip = True
            continue
        if token.startswith(("--backend=", "--out=")):
            continue
        kept.append(token)
    return [*kept, "--backend", backend, "--out", out]


def run_all(settings: options.CompareSettings, argv: Sequence[str]) -> int:
    results: dict[str, dict[str, Any]] = {}
    for backend in BACKENDS:
        out = os.path.join(settings.out, backend)
        print(f"normkit compare --backend all: {backend} -> {out}", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend)
        try:
            code = subprocess.call([sys.executable, "-m", "normkit", *child_argv(argv, backend, out)], env=env)
        except KeyboardInterrupt:
            return INTERRUPTED
        if code == INTERRUPTED:
            return INTERRUPTED
        if code != 0:
            print(f"normkit compare --backend all: the {backend} study failed (exit {code})", file=sys.stderr)
            continue
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            results[backend] = json.load(f)
    if not results:
        raise CLIError("the study failed on every backend", FAILURE)
    written = write_side_by_side(settings.out, results)
    print(written["text"])
    print(f"\nreport: {written['report']}\ndata:   {written['csv']}")
    return 0 if len(results) == len(BACKENDS) else FAILURE


def _run_key(run: dict[str, Any]) -> tuple[str, int, int]:
    return (run["norm"], run["batch_size"], run["seed"])


def compare_runs(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (norm, batch size, seed): each backend's test accuracy and loss, and whether they are identical."""
    by_backend = {b: {_run_key(r): r for r in res["runs"]} for b, res in results.items()}
    keys = list(dict.fromkeys(k for runs in by_backend.values() for k in runs))
    rows = []
    for key in keys:
        runs = {b: runs[key] for b, runs in by_backend.items() if key in runs}
        losses = [r["test_loss"] for r in runs.values()]
        accuracies = [r["test_accuracy"] for r in runs.values()]
        rows.append(
            {
                "norm": key[0],
                "batch_size": key[1],
                "seed": key[2],
                "accuracy": {b: r["test_accuracy"] for b, r in runs.items()},
                "loss": {b: r["test_loss"] for b, r in runs.items()},
                "identical": len(runs) > 1 and len(set(losses)) == 1 and len(set(accuracies)) == 1,
                "max_accuracy_difference": max(accuracies) - min(accuracies),
                "max_loss_difference": max(losses) - min(losses),
            }
        )
    return rows


def write_side_by_side(out: str, results: dict[str, dict[str, Any]]) -> dict[str, str]:
    backends = list(results)
    summary = {b: {(r["norm"], r["batch_size"]): r for r in res["summary"]} for b, res in results.items()}
    cells = list(dict.fromkeys(k for rows in summary.values() for k in rows))
    header = ["norm", "batch", *(f"{b} test acc" for b in backends), "largest difference (points)"]
    body = []
    for cell in cells:
        present = [summary[b][cell] for b in backends if cell in summary[b]]
        means = [r["test_accuracy_mean"] for r in present]
        body.append(
            [
                cell[0],
                str(cell[1]),
                *(
                    f"{summary[b][cell]['test_accuracy_mean']:.4f} ± {summary[b][cell]['test_accuracy_std']:.4f}"
                    if cell in summary[b]
                    else "(failed)"
                    for b in backends
                ),
                f"{100 * (max(means) - min(means)):.2f}",
            ]
        )
    runs = compare_runs(results)
    identical = sum(r["identical"] for r in runs)
    largest = max((r["max_accuracy_difference"] for r in runs), default=0.0)
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        + ["| " + " | ".join(row) + " |" for row in body]
    )
    text = (
        f"Test accuracy per backend (mean ± spread over seeds), {len(runs)} runs per backend.\n\n{table}\n\n"
        f"Bit-identical across {', '.join(backends)}: {identical} of {len(runs)} runs (same test loss and "
        f"accuracy to the last bit). Largest difference of one run's test accuracy between backends: "
        f"{100 * largest:.2f} points.\n"
    )
    if identical < len(runs):
        text += (
            "What is the same on every backend: the data, its order (NumPy's generator of the seed), the seed and "
            "the layers' formulas (the test suite checks the layers against one float64 reference on each "
            "backend). What is not: the initial weights (keras.utils.set_random_seed seeds each backend's own "
            "generator: JAX, TensorFlow and PyTorch draw different numbers from the same seed), dropout masks, "
            "and the kernels' float32 summation orders; so runs agree in distribution (compare the differences "
            "with the seeds' spread), not bit for bit.\n"
        )
    report_path = os.path.join(out, "backends.md")
    commands = "\n".join(f"- {b}: `{results[b]['command']}`" for b in backends)
    write_atomic(report_path, f"# normkit compare --backend all\n\n{text}\nCommands:\n\n{commands}\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["norm", "batch_size", "seed", *(f"{b}_test_accuracy" for b in backends), "identical"])
    for r in runs:
        writer.writerow(
            [r["norm"], r["batch_size"], r["seed"], *(r["accuracy"].get(b, "") for b in backends), r["identical"]]
        )
    csv_path = os.path.join(out, "backends.csv")
    write_atomic(csv_path, buffer.getvalue())
    return {"report": report_path, "csv": csv_path, "text": text}
