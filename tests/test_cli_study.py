"""`normkit compare`'s study tools: the deep model, the figures, the moving-statistics check and its hint,
`--backend all`'s side-by-side table, and the new options' errors (on the backend under test)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import keras
import numpy as np
import pytest
from _cli_helpers import assert_figure, tiny_npz

from normkit.cli import backends, main, models, options, plots, report

pytestmark = pytest.mark.slow


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tiny_npz(tmp_path / "tiny.npz")


def _svg_root(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert float(root.get("width", "0").rstrip("pt")) > 100 and float(root.get("height", "0").rstrip("pt")) > 100
    assert len(list(root.iter("{http://www.w3.org/2000/svg}path"))) > 20  # lines, markers, glyphs: not empty
    return root


def test_deep_model_end_to_end(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deep"
    argv = [
        "compare", "--dataset", str(data), "--out", str(out), "--model", "deep", "--norms", "batch,group,ghost-batch",
        "--batch-sizes", "8", "--epochs", "2", "--seeds", "0", "--progress", "none",
        "--backend", keras.backend.backend(),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "deep model" in printed
    results = json.loads((out / "results.json").read_text())
    runs = {r["norm"]: r for r in results["runs"]}
    channels = sum(2 * c for c in models.DEEP_CHANNELS)  # two normalized convolutions per stage
    assert runs["batch"]["norm_params"] == 4 * channels  # gamma, beta, moving mean, moving variance
    assert runs["group"]["norm_params"] == 2 * channels
    assert runs["group"]["layer_call"] == "GroupNormalization(groups=4, axis=3)"
    for run in runs.values():
        assert run["model"] == "deep"
        assert math.isclose(run["learning_rate"], 0.05 * 8 / 32, rel_tol=1e-6)  # linear scaling
        assert run["steps_per_epoch"] == 6 and len(run["history"]["test_accuracy"]) == 2
        assert np.isfinite(run["test_loss"])
    assert runs["group"]["moving_statistics"] == []
    for norm in ("batch", "ghost-batch"):  # the deep model checks every batch norm variant against the data
        check = runs[norm]["moving_statistics"]
        assert len(check) == 6
        assert all(math.isclose(c["initial_share"], 0.99**12, rel_tol=1e-9) for c in check)
        assert all(c["mean_error"] >= 0 and c["variance_ratio"] >= 1 for c in check)

    text = (out / "report.md").read_text()
    assert "The deep model" in text and "0.05 x B / 32" in text
    assert "## Batch norm's moving statistics against the data's" in text
    assert "- batch, batch 8: 12 steps;" in text and "**not converged** (needs 459 steps)" in text
    assert "Hint: batch norm's moving statistics have not converged at batch 8 (12 steps)" in text
    for name in ("batch_size", "training_curves"):
        assert_figure(out / f"{name}.png", 500, 300)
        _svg_root(out / f"{name}.svg")
    assert "- ghost-batch, batch 8: 12 steps;" in text
    assert len(list((out / "runs").glob("*.json"))) == 3


def test_moving_statistics_check_against_numpy(data: Path) -> None:
    """The check's numbers for known moving statistics, against the conv output computed in float64 NumPy."""
    keras.utils.set_random_seed(0)
    model = models.build("seed", "batch", 8, 4, None)
    with np.load(data) as f:
        images = (f["x_train"][:16] / 255.0).astype("float32")
    conv = model.layers[1]
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(w), dtype=np.float64) for w in conv.weights)
    windows = np.lib.stride_tricks.sliding_window_view(images.astype(np.float64), (3, 3), axis=(1, 2))
    features = np.einsum("nhwij,ijc->nhwc", windows, kernel[:, :, 0, :]) + bias  # valid 3x3 conv, 1 channel in
    mu, var = features.mean(axis=(0, 1, 2)), features.var(axis=(0, 1, 2))
    layer = model.layers[2]
    eps = float(layer.epsilon)
    layer.moving_mean.assign((mu + 0.5 * np.sqrt(var + eps)).astype("float32"))
    layer.moving_variance.assign((4 * (var + eps) - eps).astype("float32"))
    (check,) = models.moving_statistics_check(model, images, steps=100)
    assert math.isclose(check["mean_error"], 0.5, rel_tol=1e-3)
    assert math.isclose(check["variance_ratio"], 4.0, rel_tol=1e-3)
    assert math.isclose(check["initial_share"], 0.99**100, rel_tol=1e-9)


def test_steps_and_epochs_to_converge() -> None:
    steps = models.steps_to_converge(0.99)
    assert 0.99**steps < 0.01 <= 0.99 ** (steps - 1)
    assert models.epochs_to_converge(3000, 64) == math.ceil(steps / 46)  # 46 full batches of 64 per epoch
    assert models.epochs_to_converge(10, 64) == steps  # fewer images than a batch: one step per epoch
    assert math.isclose(models.learning_rate(None, 2), 0.05 / 16) and models.learning_rate(0.1, 64) == 0.2


def _record(norm: str, batch: int, steps: int, epochs: int, accuracy: float = 0.9) -> dict:
    return {
        "norm": norm,
        "batch_size": batch,
        "steps_per_epoch": steps,
        "history": {"test_accuracy": [accuracy] * epochs},
        "moving_statistics": [
            {"layer": 0, "mean_error": 0.1, "variance_ratio": 1.5, "initial_share": 0.99 ** (steps * epochs),
             "momentum": 0.99}
        ],  # fmt: skip
    }


def test_convergence_hint() -> None:
    converged, short = _record("batch", 2, 700, 1), _record("batch", 64, 22, 1)
    assert report.convergence_hint([converged]) is None
    hint = report.convergence_hint([converged, short])
    assert hint is not None and "have not converged at batch 64 (22 steps)" in hint and "459 steps" in hint
    lines = report.moving_statistics_lines([converged, short])
    assert len(lines) == 2  # a line per batch size
    assert "batch 2: 700 steps" in lines[0] and "not converged" not in lines[0]
    assert "batch 64: 22 steps" in lines[1] and "**not converged**" in lines[1] and "factor 1.50" in lines[1]


def _rows(errors: dict[str, dict[int, float]], spread: float = 0.005, seeds: int = 3) -> list[dict]:
    return [
        {"norm": n, "batch_size": b, "test_accuracy_mean": 1 - e / 100, "test_accuracy_std": spread, "seeds": seeds}
        for n, cells in errors.items()
        for b, e in cells.items()
    ]


def test_findings_in_error_terms() -> None:
    rows = _rows(
        {
            "batch": {2: 30.0, 8: 12.0, 64: 10.0},
            "batch-renorm": {2: 20.0, 8: 11.0, 64: 10.0},
            "ghost-batch": {2: 30.0, 8: 12.0, 64: 10.5},
            "group": {2: 11.0, 8: 10.5, 64: 11.0},
        }
    )
    found = report.batch_size_findings(rows, "deep")
    assert found["verdict"] == "reproduced"
    text = found["text"]
    assert "Batch norm: 30.0% test error at batch 2 against 10.0% at its best batch size (64), 20.0 points" in text
    assert "Group norm: 11.0% test error at batch 2 against 10.5% at its best batch size (8), 0.5 points" in text
    assert "Batch renormalization: 20.0% test error at batch 2" in text and "Ghost batches: 30.0%" in text
    assert "1,352 values" not in text  # the seed model's explanation is not given for the deep model
    assert "With one seed" not in text
    one_seed = _rows({"batch": {2: 30.0, 64: 10.0}, "group": {2: 11.0, 64: 11.0}}, spread=0.0, seeds=1)
    assert "With one seed the spread over seeds is unknown" in report.batch_size_findings(one_seed)["text"]
    flat = _rows({"batch": {2: 10.5, 64: 10.0}, "group": {2: 11.0, 64: 11.0}})
    assert report.batch_size_findings(flat, "seed")["verdict"] == "not reproduced"


def _capture(monkeypatch: pytest.MonkeyPatch) -> list:
    figures: list = []
    real_save = plots._save

    def save(fig, path):
        fig.canvas.draw()
        figures.append(fig)
        _legend_outside(fig, fig.canvas.get_renderer())  # while the figure is still open
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return figures


def _curve_record(norm: str, batch: int, seed: int, epochs: int) -> dict:
    steps, images = 40, 40 * batch
    every = 2
    points = [(e, s) for e in range(epochs) for s in range(every, steps + 1, every)]
    rng = np.random.default_rng(seed + batch)
    return {
        "norm": norm,
        "batch_size": batch,
        "seed": seed,
        "train_images": images,
        "history": {"test_accuracy": list(rng.uniform(0.5, 0.9, epochs))},
        "curve": {
            "epoch": [e + s / steps for e, s in points],
            "images": [float(e * images + s * batch) for e, s in points],
            "loss": list(np.linspace(2.3, 0.5, len(points)) + rng.uniform(0, 0.1, len(points))),
            "accuracy": [0.5] * len(points),
        },
    }


@pytest.mark.parametrize("epochs", [1, 3])
def test_training_curves_against_images_seen(epochs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _capture(monkeypatch)
    records = [
        _curve_record(n, b, s, epochs) for n in ("batch", "group", "layer") for b in (2, 8, 32) for s in (0, 1)
    ]
    paths = plots.training_curves_figure(records, str(tmp_path / "curves.png"))
    assert paths == [str(tmp_path / "curves.png"), str(tmp_path / "curves.svg")]
    assert_figure(tmp_path / "curves.png", 600, 250)
    _svg_root(tmp_path / "curves.svg")
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert len(panels) == 3 * (2 if epochs > 1 else 1)  # one panel per norm; test error only with 2+ epochs
    for ax in panels:
        assert len(ax.lines) == 3  # a line per batch size
        for line in ax.lines:
            assert len(line.get_xdata()) > 1 if ax.get_ylabel() != "test error (%)" else len(line.get_xdata()) == 3
    loss_panel = panels[0]
    assert max(loss_panel.lines[0].get_xdata()) == epochs * 40 * 2  # x is images seen (batch 2: 80 per epoch)


def _legend_outside(fig, renderer) -> None:
    """No legend box overlaps an axes' data area."""
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_visible():
                assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers a panel"


def test_batch_size_figure_in_error_percent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _capture(monkeypatch)
    rows = _rows({"batch": {2: 30.0, 8: 12.0, 64: 10.0}, "group": {2: 11.0, 8: 10.5, 64: 11.0}})
    paths = plots.batch_size_figure(rows, str(tmp_path / "bs.png"), "digits")
    assert_figure(Path(paths[0]), 600, 400)
    _svg_root(Path(paths[1]))
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_ylabel().startswith("test error (%)")
    lines = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    batch_line = lines.get("batch") or next(line for line in ax.lines if list(line.get_xdata()) == [2, 8, 64])
    assert np.allclose(batch_line.get_ydata(), [30.0, 12.0, 10.0])
    left, right = ax.get_xlim()
    assert left > right  # largest batch on the left, as Wu & He drew it


def test_backend_all_helpers(tmp_path: Path) -> None:
    argv = ["compare", "--backend", "all", "--out", "x", "--seeds", "0", "--out=y", "--backend=all"]
    assert backends.child_argv(argv, "torch", "x/torch") == ["compare", "--seeds", "0", "--backend", "torch",
                                                             "--out", "x/torch"]  # fmt: skip

    def result(backend: str, loss: float) -> dict:
        runs = [{"norm": "group", "batch_size": 8, "seed": 0, "test_accuracy": 0.75, "test_loss": loss}]
        summary = [{"norm": "group", "batch_size": 8, "test_accuracy_mean": 0.75, "test_accuracy_std": 0.0}]
        return {"command": f"normkit compare --backend {backend}", "runs": runs, "summary": summary}

    written = backends.write_side_by_side(str(tmp_path), {"jax": result("jax", 0.5), "torch": result("torch", 0.5)})
    assert "Bit-identical across jax, torch: 1 of 1 runs" in written["text"]
    assert "| group | 8 | 0.7500 ± 0.0000 | 0.7500 ± 0.0000 | 0.00 |" in written["text"]
    written = backends.write_side_by_side(str(tmp_path), {"jax": result("jax", 0.5), "torch": result("torch", 0.6)})
    assert "0 of 1 runs" in written["text"] and "not bit for bit" in written["text"]
    assert (tmp_path / "backends.csv").read_text().splitlines()[1] == "group,8,0,0.75,0.75,False"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "wide"], "argument --model: invalid choice: 'wide'"),
        (["--base-lr", "0.1"], "--base-lr applies to --model deep only (the seed model uses adam), got --model seed"),
        (["--model", "deep", "--base-lr", "-1"], "--base-lr must be a positive number, got '-1'"),
        (["--model", "deep", "--base-lr", "fast"], "--base-lr must be a number, got 'fast'"),
        (["--model", "deep", "--base-lr", "nan"], "--base-lr must be a positive number, got 'nan'"),
        (["--epochs", "often"], "--epochs must be an integer or auto, got 'often'"),
        (["--preset", "tiny"], "argument --preset: invalid choice: 'tiny'"),
        (["--backend", "every"], "argument --backend: invalid choice: 'every'"),
        (["--back", "jax"], "unrecognized arguments: --back jax"),
    ],
)
def test_new_option_errors(
    extra: list[str], message: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", "--dataset", str(data), "--out", str(tmp_path / "o"), *extra]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(("normkit compare: error: ", "normkit: error: ")) and message in line, line


def test_small_batch_preset_settings() -> None:
    from normkit.cli import build_parser

    settings = options.resolve_compare(build_parser().parse_args(["compare", "--preset", "small-batch"]))
    assert settings.model == "deep" and settings.epochs == "auto" and settings.seeds == (0, 1, 2)
    assert settings.batch_sizes == (2, 4, 8, 16, 32, 64) and settings.dataset == "fashion_mnist"
    assert "batch" in settings.norms and "group" in settings.norms
    digits = options.resolve_compare(
        build_parser().parse_args(["compare", "--preset", "small-batch", "--dataset", "digits", "--epochs", "3"])
    )
    assert digits.dataset == "digits" and digits.epochs == 3 and digits.model == "deep"
