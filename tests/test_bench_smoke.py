"""The benchmark harness runs (tiny shapes, one repetition, the backend under test) and its table has the
promised columns. No timing is asserted: speed lives only in `python -m normkit.bench`."""

from __future__ import annotations

import keras

from normkit.bench import __main__ as bench
from normkit.bench import worker
from normkit.bench.cases import full_cases, smoke_cases


def test_smoke_run_gives_the_table():
    rows = [worker.measure(case, reps=1, device="cpu") for case in smoke_cases()[:2]]
    for row in rows:
        assert row["backend"] == keras.backend.backend()
        assert {"normkit", "portable", "keras", "copy"} <= set(row["ms"])
        assert any(k.startswith("native") for k in row["ms"])
        assert row["ms"]["normkit"]["fwd"] > 0 and row["ms"]["normkit"]["fwdbwd"] > 0
        # torch's eager layer-call floor (forward only); traced away on the other backends.
        assert ("layer_call" in row["ms"]) == (keras.backend.backend() == "torch")
    text = bench.markdown(rows)
    header = text.splitlines()[0]
    for column in ("fwd/keras", "fwd/native", "fwd/copy", "f+b/keras", "f+b/native", "f+b/copy", "saved normkit"):
        assert column in header
    table = text.split("\n\n")[0].splitlines()
    assert len(table) == 2 + len(rows)
    # The summary of missed targets agrees with the rows' own ratios.
    expected = sum(
        r["ms"]["normkit"][m] > r["ms"]["keras"][m] or r["ms"]["normkit"][m] > 1.25 * r["native_best"][m]
        for r in rows
        for m in ("fwd", "fwdbwd")
    )
    assert f"Ratio targets missed: {expected} of {2 * len(rows)} (case, mode) pairs." in text
    assert len([line for line in text.splitlines() if line.startswith("- ")]) == expected


def test_full_benchmark_covers_the_issue_shapes():
    shapes = {(c.layer, c.shape, c.policy) for c in full_cases()}
    for layer in ("GroupNormalization", "InstanceNormalization", "LayerNormalization", "BatchNormalization"):
        assert (layer, (32, 56, 56, 64), "float32") in shapes
        assert (layer, (8, 32, 32, 256), "float32") in shapes
    assert ("LayerNormalization", (64, 512, 768), "float32") in shapes
    assert any(c.layer == "BatchNormalization" and len(c.shape) == 2 for c in full_cases())
    assert any(c.policy == "mixed_bfloat16" for c in full_cases())


def test_merge_runs_takes_the_median_of_each_cell():
    def row(normkit_fwd, nchw, channels_last):
        return {
            "backend": "b", "device": "cpu", "case": "c", "label": "C",
            "ms": {"normkit": {"fwd": normkit_fwd, "fwdbwd": 2.0}, "native:nchw": {"fwd": nchw, "fwdbwd": 5.0},
                   "native:channels_last": {"fwd": channels_last, "fwdbwd": 4.0}, "copy": {"fwd": 1.0, "fwdbwd": None}},
        }  # fmt: skip

    merged = bench.merge_runs([[row(1.0, 3.0, 9.0)], [row(7.0, 3.5, 1.0)], [row(2.0, 9.0, 2.0)]])
    assert len(merged) == 1 and merged[0]["runs"] == 3
    assert merged[0]["ms"]["normkit"]["fwd"] == 2.0
    assert merged[0]["ms"]["copy"]["fwdbwd"] is None
    # The best native is re-chosen from the medians: nchw 3.5, channels_last 2.0.
    assert merged[0]["native_best"]["fwd"] == 2.0 and merged[0]["native_best_name"]["fwd"] == "native:channels_last"
    assert merged[0]["native_best_name"]["fwdbwd"] == "native:channels_last"


def test_native_misses_name_the_layer_call_floor():
    def row(ours, native, call):
        ms = {"normkit": {"fwd": ours, "fwdbwd": 1.0}, "keras": {"fwd": 9.0, "fwdbwd": 9.0}}
        if call is not None:
            ms["layer_call"] = {"fwd": call, "fwdbwd": None}
        best, names = {"fwd": native, "fwdbwd": 1.0}, {"fwd": "native", "fwdbwd": "n"}
        return {"backend": "b", "device": "cpu", "label": "C", "ms": ms, "native_best": best, "native_best_name": names}

    text = bench.target_misses([row(0.9, 0.3, 0.07), row(0.9, 0.3, None)])
    assert "Ratio targets missed: 2 of 4" in text
    lines = text.splitlines()[1:]
    assert lines[0].endswith("3.00x native (native); a bare Keras layer call costs 0.07 of the 0.60 ms gap")
    assert lines[1].endswith("3.00x native (native)")
