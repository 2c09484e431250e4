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
        # The harness floor, an identity layer timed like the layers, on every backend and in both modes.
        assert row["ms"]["identity"]["fwd"] > 0 and row["ms"]["identity"]["fwdbwd"] > 0
        assert "identity" not in row["saved_bytes"]
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


def _row(backend, case, ours, builtin, native, identity=None, mode="fwd"):
    other = "fwdbwd" if mode == "fwd" else "fwd"
    ms = {"normkit": {mode: ours, other: 1.0}, "keras": {mode: builtin, other: 9.0}}
    if identity is not None:
        ms["identity"] = {mode: identity, other: 0.5}
    best, names = {mode: native, other: 1.0}, {mode: "native", other: "n"}
    return {"backend": backend, "device": "cpu", "case": case, "label": "C", "ms": ms, "native_best": best,
            "native_best_name": names}  # fmt: skip


def test_native_misses_name_the_layer_call_floor_on_torch_only():
    rows = [
        _row("torch", "c", 0.9, 9.0, 0.3, 0.07),
        _row("torch", "c", 0.9, 9.0, 0.3),
        _row("jax", "c", 0.9, 9.0, 0.3, 0.07),
    ]
    text = bench.target_misses(rows)
    assert "Ratio targets missed: 3 of 6" in text
    lines = text.splitlines()[1:]
    assert lines[0].endswith("3.00x native (native); a bare Keras layer call costs 0.07 of the 0.60 ms gap")
    assert lines[1].endswith("3.00x native (native)")
    assert lines[2].endswith("3.00x native (native)")  # under jax.jit a layer call is traced away


def test_headlines_state_the_speedup_and_what_the_target_asks_of_native():
    rows = [
        _row("tensorflow", "bn_32x56x56x64", 10.0, 23.0, 9.2, identity=3.5, mode="fwdbwd"),
        _row("jax", "gn_32x56x56x64", 7.0, 42.0, 36.0, identity=0.1),
        _row("jax", "bn_32x56x56x64", 1.0, 99.0, 1.0),  # not a headline case
    ]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in bench.headlines(rows).splitlines()[4:]]
    assert len(cells) == 2
    jax_gn, tf_bn = cells  # the headline order: JAX GroupNorm first
    assert jax_gn[2:8] == ["fwd", "7.00 ms", "42.00 ms", "6.0x", "5x: met", "8.40 ms"]
    assert tf_bn[2:] == ["f+b", "10.00 ms", "23.00 ms", "2.3x", "4x: not met", "5.75 ms", "9.20 ms (native)",
                         "2.5x", "3.50 ms"]  # fmt: skip
    assert bench.headlines([rows[2]]) == ""
