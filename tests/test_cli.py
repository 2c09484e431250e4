"""The `normkit` command end to end on the backend under test (KERAS_BACKEND), on a tiny .npz data set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from _cli_helpers import assert_figure, tiny_npz

from normkit.cli import compare, main, norms, report
from normkit.cli import diagram as diagram_mod

pytestmark = pytest.mark.slow


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tiny_npz(tmp_path / "tiny.npz")


def _compare(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compare",
        "--dataset",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--backend",
        keras.backend.backend(),
        *extra,
    ]


def _runs(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}


def test_compare_end_to_end(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    argv = _compare(data, out, "--norms", "group,batch", "--batch-sizes", "8,16", "--progress", "plain")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for column in report.TABLE_HEADER:
        assert column in printed
    assert f"report: {out / 'report.md'}" in printed

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == report.COLUMNS
    expected = {("group", "8"), ("group", "16"), ("batch", "8"), ("batch", "16")}
    assert {(r["norm"], r["batch_size"]) for r in rows} == expected
    for r in rows:
        assert 0.0 <= float(r["test_accuracy_mean"]) <= 1.0
        assert float(r["test_accuracy_std"]) == 0.0  # one seed
        assert np.isfinite(float(r["test_loss_mean"]))
        assert int(r["params"]) > 800_000
    assert {r["norm_params"] for r in rows} == {"20", "40"}  # group: gamma+beta (10 each); batch: + moving stats

    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("normkit compare --dataset")
    assert results["versions"]["backend"] == keras.backend.backend()
    assert len(results["runs"]) == 4 and len(results["summary"]) == 4
    assert results["findings"]["verdict"] in ("reproduced", "partly reproduced", "not reproduced")
    run = results["runs"][0]
    assert run["train_images"] == 48 and run["test_images"] == 20
    assert run["steps_per_epoch"] in (6, 3)

    text = (out / "report.md").read_text()
    assert results["command"] in text
    assert "| norm | batch | seeds | test acc |" in text
    assert "![batch_size.png](batch_size.png)" in text
    assert "Wu & He" in text and results["findings"]["verdict"].capitalize() in text
    assert f"keras: {keras.__version__}" in text

    assert_figure(out / "batch_size.png", 700, 500)
    assert_figure(out / "training_curves.png", 500, 250)
    for name in ("batch_size", "training_curves"):
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert f"figure: {out / 'training_curves.svg'}" in printed
    assert len(_runs(out)) == 4


def test_resume_after_interruption(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    argv = _compare(data, out, "--norms", "layer,none,batch", "--batch-sizes", "16", "--progress", "rich")
    real_train_one = compare.train_one
    calls: list[str] = []

    def interrupted_on_second(plan, *args, **kwargs):
        calls.append(plan.norm)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second run
        return real_train_one(plan, *args, **kwargs)

    def counted(plan, *args, **kwargs):
        calls.append(plan.norm)
        return real_train_one(plan, *args, **kwargs)

    monkeypatch.setattr(compare, "train_one", interrupted_on_second)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted; 1 of 3 runs are finished" in err and "Run the same command again" in err
    assert "Traceback" not in err
    first = _runs(out)
    assert [r["norm"] for r in first.values()] == ["layer"]
    assert not (out / "report.md").exists()
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".tmp")]

    calls.clear()
    monkeypatch.setattr(compare, "train_one", counted)
    assert main(argv) == 0
    assert "resuming: 1 of 3 runs already finished" in capsys.readouterr().out
    assert calls == ["none", "batch"]  # only the runs that had not finished
    second = _runs(out)
    assert len(second) == 3
    for key, record in first.items():
        assert second[key] == record  # the finished run was kept, not retrained
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 3

    # Deterministic: a deleted run is retrained to the same numbers (same backend, machine and seed).
    calls.clear()
    (batch_key,) = [k for k, r in second.items() if r["norm"] == "batch"]
    (out / "runs" / f"{batch_key}.json").unlink()
    assert main(argv) == 0
    assert calls == ["batch"]
    again = _runs(out)[batch_key]
    for key in ("test_loss", "test_accuracy", "train_loss", "train_accuracy", "history", "curve"):
        assert again[key] == second[batch_key][key], key
    assert (out / "report.md").is_file()


@pytest.mark.parametrize("norm", ["batch-renorm", "ghost-batch"])
def test_batch_norm_variants(norm: str, data: Path, tmp_path: Path) -> None:
    reason = norms.unavailable_reason(norm, 8, 4)
    if reason is not None and reason.startswith("TypeError"):
        pytest.skip(f"BatchNormalization does not take this argument yet: {reason}")
    out = tmp_path / "study"
    assert main(_compare(data, out, "--norms", norm, "--batch-sizes", "8", "--progress", "none")) == 0
    (record,) = _runs(out).values()
    expected = "renorm=True" if norm == "batch-renorm" else "virtual_batch_size=4"
    assert expected in record["layer_call"]
    assert np.isfinite(record["test_loss"])


def _npz_missing_key(tmp_path: Path) -> str:
    path = tmp_path / "missing.npz"
    np.savez(path, x_train=np.zeros((4, 28, 28)), y_train=np.zeros(4, int), x_test=np.zeros((2, 28, 28)))
    return str(path)


def _npz_wrong_shape(tmp_path: Path) -> str:
    path = tmp_path / "shape.npz"
    arrays = {"x_train": np.zeros((4, 32, 32)), "y_train": np.zeros(4, int)}
    np.savez(path, **arrays, x_test=np.zeros((2, 28, 28)), y_test=np.zeros(2, int))
    return str(path)


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("unknown-norm", 2, "unknown norm 'nope'; choose from none, batch"),
        ("unknown-dataset", 2, "unknown dataset 'cifar'"),
        ("batch-zero", 2, "--batch-sizes must be at least 1, got 0"),
        ("batch-text", 2, "--batch-sizes must be an integer, got 'x'"),
        ("bad-choice", 2, "argument --backend: invalid choice"),
        ("npz-missing-key", 1, "lacks y_test (an .npz needs x_train, y_train, x_test, y_test)"),
        ("npz-wrong-shape", 1, "x_train must have shape (N, 28, 28) or (N, 28, 28, 1), got (4, 32, 32)"),
        ("npz-absent", 1, "no such .npz file"),
        ("unwritable-out", 1, "cannot write to --out"),
        ("batch-too-big", 1, "batch size 64 is larger than the 48 training images"),
    ],
)
def test_compare_errors(
    case: str, code: int, message: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    make = {
        "unknown-norm": lambda: _compare(data, out, "--norms", "group,nope"),
        "unknown-dataset": lambda: ["compare", "--dataset", "cifar", "--out", str(out)],
        "batch-zero": lambda: _compare(data, out, "--batch-sizes", "0,2"),
        "batch-text": lambda: _compare(data, out, "--batch-sizes", "x"),
        "bad-choice": lambda: ["compare", "--backend", "numpy"],
        "npz-missing-key": lambda: ["compare", "--dataset", _npz_missing_key(tmp_path), "--out", str(out)],
        "npz-wrong-shape": lambda: ["compare", "--dataset", _npz_wrong_shape(tmp_path), "--out", str(out)],
        "npz-absent": lambda: ["compare", "--dataset", str(tmp_path / "absent.npz"), "--out", str(out)],
        "unwritable-out": lambda: _compare(data, tmp_path / "tiny.npz" / "sub"),  # below a file: cannot be created
        "batch-too-big": lambda: _compare(data, out, "--batch-sizes", "64"),
    }[case]
    assert main(make()) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("normkit compare: error: ") or lines[0].startswith("normkit: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_keras_dataset_offline_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/...mnist.npz: None -- [Errno -3]")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert main(["compare", "--dataset", "mnist", "--out", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "could not load mnist" in line
    assert f"put mnist.npz in {tmp_path / 'kh' / 'datasets'}/ or pass --dataset /path/to/mnist.npz" in line


def test_help_is_usage_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--help"]) == 0
    assert "--batch-sizes" in capsys.readouterr().out
    assert main([]) == 2


@pytest.mark.parametrize(
    "kind, groups, axis, highlighted, means",
    [
        ("batch", 0, -1, 4 * 4, 10),  # one channel, every sample and position
        ("layer", 0, [1, 2, 3], 10 * 4, 4),  # one sample, everything else
        ("layer", 0, 3, 10, 16),  # the seed's axis=3: one sample, one position, all channels
        ("instance", 0, -1, 4, 40),  # one sample, one channel
        ("group", 5, -1, 2 * 4, 20),  # one sample, a group of 2 channels
    ],
)
def test_diagram_sharing_follows_the_reduction(kind, groups, axis, highlighted, means) -> None:
    panel = diagram_mod.panel_for(kind, groups, axis, (4, 2, 2, 10))
    assert panel.cube.shape == (4, 10, 4)
    assert int(panel.cube.sum()) == highlighted
    assert f"{means} means, each over {highlighted} elements" in panel.caption


def test_diagram_channels_first_group() -> None:
    panel = diagram_mod.panel_for("group", 2, 1, (3, 4, 2, 2))  # N, C, H, W
    assert panel.cube.shape == (3, 4, 4)
    assert panel.cube[0, :2].all() and not panel.cube[0, 2:].any() and not panel.cube[1:].any()


def test_diagram_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "all.png"
    assert main(["diagram", "--out", str(out)]) == 0
    assert f"diagram: {out}" in capsys.readouterr().out
    image = assert_figure(out, 1500, 400)
    rgb = image[..., :3]
    blue = (rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.4)
    assert blue.mean() > 0.005  # the highlighted cubes are there

    one = tmp_path / "group.png"
    assert main(["diagram", "--layer", "group", "--groups", "4", "--axis", "-1", "--out", str(one)]) == 0
    assert_figure(one, 500, 450)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "group", "--groups", "3", "--shape", "2,2,2,10"], "must be a multiple of `groups`"),
        (["--layer", "instance", "--axis", "1,2"], "--axis for instance normalization is one int"),
        (["--layer", "batch", "--groups", "2"], "--groups applies to --layer group only"),
        (["--shape", "2,2"], "--shape must be four sizes"),
    ],
)
def test_diagram_errors(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", *args, "--out", str(tmp_path / "d.png")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("normkit diagram: error: ") and message in line


def test_backend_reexec_through_python_m_normkit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--backend naming another backend than the imported one re-runs the command as `python -m normkit`."""
    other = {"jax": "torch", "tensorflow": "jax", "torch": "jax"}[keras.backend.backend()]
    out = tmp_path / "d.png"
    assert main(["diagram", "--layer", "instance", "--backend", other, "--out", str(out)]) == 0
    assert_figure(out, 300, 400)
