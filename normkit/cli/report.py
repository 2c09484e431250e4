"""The study's outputs: the terminal table, results.csv, results.json, report.md (with the figures' findings)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from normkit.cli import options
from normkit.cli.compare import write_atomic

# results.csv: one row per (norm, batch size), aggregated over seeds
COLUMNS = (
    "norm",
    "batch_size",
    "seeds",
    "test_accuracy_mean",
    "test_accuracy_std",
    "test_loss_mean",
    "train_accuracy_mean",
    "train_loss_mean",
    "seconds_per_epoch",
    "params",
    "norm_params",
    "layer_call",
)
# Findings: a difference counts only beyond both this many accuracy points and twice the seeds' spread.
MARGIN_POINTS = 2.0


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows per (norm, batch size) in study order: mean and spread (sample std, 0 for one seed) over seeds."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["norm"], r["batch_size"]), []).append(r)
    rows = []
    order = {name: i for i, name in enumerate(options.NORMS)}
    for (norm, batch_size), runs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        acc = np.array([r["test_accuracy"] for r in runs])
        rows.append(
            {
                "norm": norm,
                "batch_size": batch_size,
                "seeds": len(runs),
                "test_accuracy_mean": float(acc.mean()),
                "test_accuracy_std": float(acc.std(ddof=1)) if len(runs) > 1 else 0.0,
                "test_loss_mean": float(np.mean([r["test_loss"] for r in runs])),
                "train_accuracy_mean": float(np.mean([r["train_accuracy"] for r in runs])),
                "train_loss_mean": float(np.mean([r["train_loss"] for r in runs])),
                "seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in runs])),
                "params": runs[0]["params"],
                "norm_params": runs[0]["norm_params"],
                "layer_call": runs[0]["layer_call"],
            }
        )
    return rows


def batch_size_findings(rows: Sequence[dict[str, Any]], model: str = "seed") -> dict[str, Any]:
    """Does this data reproduce Wu & He (2018) Figure 1: batch norm's error grows as the batch shrinks, group
    norm's stays flat?

    For each norm: the rise in test error (points) from its best batch size to the smallest one. Reproduced when
    batch norm's rise exceeds MARGIN_POINTS and twice its spread over seeds, and exceeds group norm's rise by
    MARGIN_POINTS too; partly when batch norm's error grows but group norm's grows about as much.
    """
    by_norm: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_norm.setdefault(row["norm"], {})[row["batch_size"]] = row
    if "batch" not in by_norm or "group" not in by_norm or len(by_norm["batch"]) < 2:
        return {
            "verdict": "not assessed",
            "text": "Not assessed: the Wu & He comparison needs the batch and group norms at two or more batch sizes.",
        }
    rises = {norm: _rise(cells) for norm, cells in by_norm.items()}
    bn, gn = rises["batch"], rises["group"]
    bn_degrades = bn["rise"] > MARGIN_POINTS and bn["rise"] > 2 * bn["spread"]
    if bn_degrades and bn["rise"] - gn["rise"] > MARGIN_POINTS:
        verdict = "reproduced"
    elif bn_degrades:
        verdict = "partly reproduced"
    else:
        verdict = "not reproduced"
    text = f"**{verdict.capitalize()}.** " + " ".join(
        _rise_sentence(NORM_TITLES.get(norm, norm), rises[norm]) for norm in ("batch", "group")
    )
    if verdict == "reproduced":
        text += " As in Wu & He's Figure 1, batch norm's error grows as the batch shrinks; group norm's stays flat."
    elif verdict == "partly reproduced":
        text += (
            " Batch norm's error grows at small batches, but group norm's grows about as much, so the difference is "
            "not batch norm's alone (fewer or noisier updates hurt every norm here)."
        )
    else:
        text += (
            f" Batch norm's error at the smallest batch stays within {MARGIN_POINTS:.0f} points (or twice the seeds' "
            "spread) of its best, so the effect does not show here."
        )
        if model == "seed":
            text += (
                " The seed model has one convolution: its statistics are taken over B x 26 x 26 positions, so even "
                "B=2 gives 1,352 values per channel, unlike the deep ImageNet ResNet of the paper (try "
                "`--preset small-batch`)."
            )
    if min(row["seeds"] for row in rows if row["norm"] in ("batch", "group")) < 2:
        text += (
            " With one seed the spread over seeds is unknown (shown as 0), so this verdict can be noise: run two or "
            "more seeds."
        )
    others = [n for n in ("batch-renorm", "ghost-batch", "layer", "instance", "none") if n in rises]
    if others:
        text += "\n\nThe others: " + " ".join(_rise_sentence(NORM_TITLES.get(n, n), rises[n]) for n in others)
        if "ghost-batch" in rises:
            text += (
                " (Ghost batches of V samples equal batch norm when B <= V, so only larger batches can differ.)"
            )
    return {
        "verdict": verdict,
        "text": text,
        "smallest_batch": bn["smallest"],
        "batch_drop_points": bn["rise"],
        "group_drop_points": gn["rise"],
        "rises": rises,
    }


NORM_TITLES = {
    "batch": "Batch norm",
    "group": "Group norm",
    "batch-renorm": "Batch renormalization",
    "ghost-batch": "Ghost batches",
    "layer": "Layer norm",
    "instance": "Instance norm",
    "none": "No normalization",
}


def _rise(cells: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The rise in test error (points) from a norm's best batch size to its smallest, with the seeds' spread."""
    smallest = min(cells)
    best = max(cells, key=lambda b: cells[b]["test_accuracy_mean"])
    return {
        "smallest": smallest,
        "best": best,
        "error_smallest": 100 * (1 - cells[smallest]["test_accuracy_mean"]),
        "error_best": 100 * (1 - cells[best]["test_accuracy_mean"]),
        "rise": 100 * (cells[best]["test_accuracy_mean"] - cells[smallest]["test_accuracy_mean"]),
        "spread": 100 * max(cells[smallest]["test_accuracy_std"], cells[best]["test_accuracy_std"]),
    }


def _rise_sentence(title: str, rise: dict[str, Any]) -> str:
    return (
        f"{title}: {rise['error_smallest']:.1f}% test error at batch {rise['smallest']} against "
        f"{rise['error_best']:.1f}% at its best batch size ({rise['best']}), {rise['rise']:.1f} points higher "
        f"(seed spread up to {rise['spread']:.1f})."
    )


def moving_statistics_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """A line per (norm with moving statistics, batch size): how far the moving mean and variance are from the
    statistics of the training data (worst layer, mean over seeds), and whether they had steps enough."""
    from normkit.cli import models

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        if models.worst(r.get("moving_statistics") or []) is not None:
            groups.setdefault((r["norm"], r["batch_size"]), []).append(r)
    lines = []
    order = {name: i for i, name in enumerate(options.NORMS)}
    for (norm, batch_size), runs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        worst = [models.worst(r["moving_statistics"]) for r in runs]
        mean_error = float(np.mean([w["mean_error"] for w in worst]))
        ratio = float(np.mean([w["variance_ratio"] for w in worst]))
        steps = runs[0]["steps_per_epoch"] * len(runs[0]["history"]["test_accuracy"])
        share = runs[0]["moving_statistics"][0]["initial_share"]
        momentum = runs[0]["moving_statistics"][0]["momentum"]
        converged = share < models.CONVERGED_INITIAL_SHARE
        lines.append(
            f"- {norm}, batch {batch_size}: {steps:,} steps; the moving means are off by {mean_error:.2f} of the "
            f"data's standard deviation and the moving variances by a factor {ratio:.2f} (worst layer, mean over "
            f"{len(runs)} seed(s)); the initial values (mean 0, variance 1) still weigh "
            f"momentum^steps = {momentum}^{steps} = {share:.2g}"
            + ("." if converged else f": **not converged** (needs {models.steps_to_converge(momentum):,} steps).")
        )
    return lines


def convergence_hint(records: Sequence[dict[str, Any]]) -> str | None:
    """A warning when some run's moving statistics kept 1% or more of their initial values."""
    from normkit.cli import models

    short = sorted(
        {
            (r["batch_size"], r["steps_per_epoch"] * len(r["history"]["test_accuracy"]))
            for r in records
            if r.get("moving_statistics")
            and r["moving_statistics"][0]["initial_share"] >= models.CONVERGED_INITIAL_SHARE
        }
    )
    if not short:
        return None
    momentum = next(r["moving_statistics"][0]["momentum"] for r in records if r.get("moving_statistics"))
    needed = models.steps_to_converge(momentum)
    which = ", ".join(f"batch {b} ({s:,} steps)" for b, s in short)
    return (
        f"Hint: batch norm's moving statistics have not converged at {which}: with momentum {momentum} they "
        f"need about {needed:,} steps to forget their initial values (mean 0, variance 1) below "
        f"{100 * models.CONVERGED_INITIAL_SHARE:.0f}%, so at inference these models normalize with statistics "
        "that are not the data's, and their test loss and accuracy say little about batch norm itself. Train "
        "longer (`--epochs auto` picks enough epochs) or use more data."
    )


def _fmt_error(row: dict[str, Any]) -> str:
    return f"{100 * (1 - row['test_accuracy_mean']):.2f} ± {100 * row['test_accuracy_std']:.2f}"


TABLE_HEADER = (
    "norm", "batch", "seeds", "test acc", "± std", "test loss", "train acc", "s/epoch", "params", "norm params"
)


def table_cells(row: dict[str, Any]) -> tuple[str, ...]:
    return (
        row["norm"],
        str(row["batch_size"]),
        str(row["seeds"]),
        f"{row['test_accuracy_mean']:.4f}",
        f"{row['test_accuracy_std']:.4f}",
        f"{row['test_loss_mean']:.4f}",
        f"{row['train_accuracy_mean']:.4f}",
        f"{row['seconds_per_epoch']:.2f}",
        f"{row['params']:,}",
        str(row["norm_params"]),
    )


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def pivot_table(rows: Sequence[dict[str, Any]]) -> str:
    """Test error (%), norms down and batch sizes across (the batch-size figure as numbers)."""
    sizes = sorted({r["batch_size"] for r in rows}, reverse=True)
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    cell = {(r["norm"], r["batch_size"]): r for r in rows}
    body = [[n] + [_fmt_error(cell[(n, b)]) if (n, b) in cell else "" for b in sizes] for n in norms]
    return markdown_table(["norm \\ batch", *map(str, sizes)], body)


def print_table(records: Sequence[dict[str, Any]], settings: options.CompareSettings) -> None:
    rows = summarize(records)
    seed_page = settings.preset == "seed-tutorial"
    header = TABLE_HEADER + (("seed page",) if seed_page else ())
    body = [table_cells(r) + ((_seed_page(r),) if seed_page else ()) for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown_table(header, body))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # a log or pipe: do not wrap the table at 80 columns
    table = Table(title="normkit compare: test accuracy over seeds")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for cells in body:
        table.add_row(*cells)
    console.print(table)
    print(batch_size_findings(rows, settings.model)["text"].replace("**", ""))
    hint = convergence_hint(records)
    if hint:
        print(hint)


def _seed_page(row: dict[str, Any]) -> str:
    value = options.SEED_PAGE_ACCURACY.get(row["norm"])
    return "" if value is None else f"{value:.4f}"


def write_all(
    out: str,
    settings: options.CompareSettings,
    dataset: Any,
    records: Sequence[dict[str, Any]],
    command: str,
    versions: dict[str, str],
) -> dict[str, Any]:
    """Writes results.csv, results.json, the figures and report.md; returns their paths."""
    from normkit.cli import plots

    rows = summarize(records)
    findings = batch_size_findings(rows, settings.model)
    findings["moving_statistics"] = moving_statistics_lines(records)
    findings["convergence_hint"] = convergence_hint(records)
    figures = [
        *plots.batch_size_figure(rows, os.path.join(out, "batch_size.png"), dataset.name),
        *plots.training_curves_figure(records, os.path.join(out, "training_curves.png")),
    ]

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row[k]) for k in COLUMNS})
    csv_path = os.path.join(out, "results.csv")
    write_atomic(csv_path, buffer.getvalue())

    json_path = os.path.join(out, "results.json")
    payload = {
        "command": command,
        "versions": versions,
        "settings": _settings_dict(settings),
        "dataset": {"name": dataset.name, "description": dataset.description},
        "summary": rows,
        "findings": findings,
        "runs": [{k: v for k, v in r.items() if k not in ("curve",)} for r in records],
    }
    write_atomic(json_path, json.dumps(payload, indent=1))

    md_path = os.path.join(out, "report.md")
    write_atomic(md_path, _markdown(settings, dataset, rows, records, findings, command, versions, figures))
    return {"report": md_path, "csv": csv_path, "json": json_path, "figures": figures}


def _csv_value(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) else value


def _settings_dict(settings: options.CompareSettings) -> dict[str, Any]:
    keys = ("norms", "dataset", "batch_sizes", "epochs", "seeds", "train_limit", "test_limit", "last_batch")
    found = {k: getattr(settings, k) for k in keys}
    found.update(ghost_batch_size=settings.ghost_batch_size, train_on=settings.train_on, preset=settings.preset)
    found.update(model=settings.model, base_lr=settings.base_lr)
    return found


def _markdown(
    settings: options.CompareSettings,
    dataset: Any,
    rows: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    findings: dict[str, Any],
    command: str,
    versions: dict[str, str],
    figures: Sequence[str],
) -> str:
    seed_page = settings.preset == "seed-tutorial"
    header = TABLE_HEADER + (("seed page",) if seed_page else ())
    body = [table_cells(r) + ((_seed_page(r),) if seed_page else ()) for r in rows]
    calls = markdown_table(("norm", "layer after Conv2D"), [(r["norm"], f"`{r['layer_call']}`") for r in rows])
    calls_seen = {r["norm"] for r in rows}
    version_lines = "\n".join(f"- {k}: {v}" for k, v in versions.items())
    total_minutes = sum(sum(r["epoch_seconds"]) for r in records) / 60
    if settings.model == "deep":
        from normkit.cli import models

        lr = models.DEEP_BASE_LR if settings.base_lr is None else settings.base_lr
        model_text = (
            "The deep model (Reshape 28x28x1; 3 stages of 2 x [Conv2D 3x3 no bias, the normalization, ReLU] with "
            f"{', '.join(map(str, models.DEEP_CHANNELS))} channels and 2x2 max pooling between stages; global "
            "average pooling, Dense 10 softmax; SGD with momentum 0.9, sparse categorical cross-entropy) trained "
            "once per (normalization, batch size, seed). The learning rate is linear in the batch size, "
            f"{lr:g} x B / 32 (Goyal et al. 2017's rule, which Wu & He follow), so at a fixed number of epochs "
            "every batch size follows about the same path through the same images."
        )
        caveat = (
            "Caveats: a 6-convolution network on 28x28 images, not ResNet-50 on ImageNet; batch norm's statistics "
            "at the last stage still come from B x 7 x 7 values per channel (98 at B=2)."
        )
    else:
        model_text = (
            "The seed tutorial's model (Reshape 28x28x1, Conv2D 10 filters 3x3, the normalization, Flatten, Dense "
            "128 relu, Dropout 0.2, Dense 10 softmax; adam, sparse categorical cross-entropy) trained once per "
            "(normalization, batch size, seed)."
        )
        caveat = (
            "Caveats: the learning rate (adam's default) is not scaled with the batch size, and a fixed number of "
            "epochs means small batches take many more steps, so every norm's curve also reflects how far training "
            "got."
        )
    moving = findings.get("moving_statistics") or []
    hint = findings.get("convergence_hint")
    parts = [
        "# normkit compare",
        "",
        model_text,
        "",
        f"- data: {dataset.description}",
        f"- epochs: {settings.epochs}; seeds: {', '.join(map(str, settings.seeds))}; batch sizes: "
        f"{', '.join(map(str, settings.batch_sizes))}; last partial batch: {settings.last_batch}"
        + (" (ghost-batch always drops it)" if "ghost-batch" in calls_seen else ""),
        f"- {len(records)} runs, {total_minutes:.1f} minutes of training in all",
        "",
        "## Results",
        "",
        "Test accuracy is measured after the last epoch; spread is the sample standard deviation over seeds "
        "(0 with one seed). train acc is Keras's running mean over the last epoch (what `model.fit` prints, "
        "and what the seed page reports). s/epoch includes the first epoch's one-time compilation.",
        "",
        markdown_table(header, body),
        "",
        "### Test error (%) by batch size (mean ± spread over seeds)",
        "",
        pivot_table(rows),
        "",
        "## Figures",
        "",
        *(f"![{os.path.basename(f)}]({os.path.basename(f)})\n" for f in figures if f.endswith(".png")),
        "(Each figure is also written as SVG beside its PNG.)",
        "",
        "## Does this data reproduce Wu & He (2018), Figure 1?",
        "",
        "Wu & He drew ImageNet error against batch size: batch norm's error grows as the batch shrinks while "
        "group norm's stays flat.",
        "",
        findings["text"],
        "",
        caveat,
        "",
    ]
    if moving:
        parts += [
            "## Batch norm's moving statistics against the data's",
            "",
            "At inference batch norm normalizes with its moving mean and variance, exponential averages of the "
            "batches' statistics (weight 1 - momentum per step). Here they are set against the statistics of "
            "each batch norm layer's input over (up to) 1,000 training images in inference mode, per channel: the "
            "mean's error in the data's standard deviations and the variance's ratio (1 = exact), for the worst "
            "layer of the model.",
            "",
            *moving,
            "",
        ]
    if hint:
        parts += [hint, ""]
    parts += []
    if seed_page:
        parts += [
            "## Against the seed page",
            "",
            "The Addons Normalizations tutorial trains each model for one epoch on the 10,000 MNIST test images at "
            "batch 32 and prints accuracy group 0.7722, instance 0.7194, layer 0.8049: Keras's running training "
            "accuracy over that epoch, so compare it with the train acc column. The test acc column here is measured "
            "on the 60,000 training images, which these models never saw.",
            "",
        ]
    parts += [
        "## Layers",
        "",
        calls,
        "",
        "## Reproducing",
        "",
        "```",
        command,
        "```",
        "",
        "Versions:",
        "",
        version_lines,
        "",
        "Each run sets `keras.utils.set_random_seed(seed)` and shuffles with NumPy's generator of that seed, so a "
        "rerun on the same backend, machine and versions gives the same numbers (see docs/compare.md for what is "
        "and is not bit-reproducible). Timings depend on the machine's load.",
        "",
    ]
    return "\n".join(parts)
