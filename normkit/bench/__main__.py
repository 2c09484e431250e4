"""`python -m normkit.bench`: normkit's layers beside the Keras 3 built-ins, the native ops and a copy.

    python -m normkit.bench                       # every case, jax, tensorflow and torch, CPU (and GPU if any)
    python -m normkit.bench --smoke --out t.md    # tiny shapes, one repetition: checks the harness only
    python -m normkit.bench --backends torch --only gn_32x56x56x64
    python -m normkit.bench --malloc glibc        # glibc's allocator defaults instead of heap reuse

Each backend runs in its own process (normkit.bench.worker). The table gives medians in ms of forward and
forward+backward, and the ratios normkit / Keras built-in, normkit / best native op, normkit / copy of the
input, and the bytes each keeps for backward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from normkit.bench.cases import best_native

BACKENDS = ("jax", "tensorflow", "torch")
COLUMNS = [
    "backend", "device", "case", "variant",
    "normkit fwd", "keras fwd", "native fwd", "copy", "fwd/keras", "fwd/native", "fwd/copy",
    "normkit f+b", "keras f+b", "native f+b", "f+b/keras", "f+b/native", "f+b/copy",
    "saved normkit", "saved keras", "saved/input",
]  # fmt: skip


# glibc malloc: serve allocations up to 32 MB (its maximum) from the heap and never trim it, so that a
# buffer freed by one call is reused by the next instead of being unmapped and page-faulted in afresh. On
# the VMs these numbers come from, first-touch page faults on a 25 MB tensor cost 2-20 ms, more than the
# kernels themselves, and single timings swung 2-5x between runs with the default dynamic threshold. Every
# variant runs under the same setting. A value already in the environment wins.
_MALLOC_DEFAULTS = (("MALLOC_MMAP_THRESHOLD_", "33554432"), ("MALLOC_TRIM_THRESHOLD_", "4294967296"))
MALLOC_ENV = {k: os.environ.get(k, v) for k, v in _MALLOC_DEFAULTS}


def _gpu_available(backend: str) -> bool:
    code = {
        "torch": "import torch; print(torch.cuda.is_available())",
        "jax": "import jax; print(any(d.platform == 'gpu' for d in jax.devices()))",
        "tensorflow": "import tensorflow as tf; print(bool(tf.config.list_physical_devices('GPU')))",
    }[backend]
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip().endswith("True")


def run_backend(backend: str, args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if args.malloc == "tuned":
            env.update(MALLOC_ENV)
        else:  # glibc's own dynamic threshold, as in a user's process
            for name, _ in _MALLOC_DEFAULTS:
                env.pop(name, None)
        env.pop("NORMKIT_DISABLE_FAST_PATHS", None)
        cmd = [sys.executable, "-m", "normkit.bench.worker", "--cases", "smoke" if args.smoke else "full",
               "--reps", str(args.reps), "--device", device, "--out", out]  # fmt: skip
        if args.only:
            cmd += ["--only", args.only]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-4000:])
            raise SystemExit(f"benchmark worker for {backend} failed")
        with open(out) as f:
            return json.load(f)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    table = []
    for r in rows:
        ms = r["ms"]
        ours, keras_, native, copy = ms["normkit"], ms["keras"], r["native_best"], ms["copy"]["fwd"]
        saved = r["saved_bytes"]

        def ratio(a: float | None, b: float | None) -> str:
            return "" if a is None or not b else f"{a / b:.2f}"

        mb = 1 << 20
        table.append([
            r["backend"], r["device"], r["label"], f"{r['native_best_name']['fwd']}/{r['native_best_name']['fwdbwd']}",
            _fmt(ours["fwd"]), _fmt(keras_["fwd"]), _fmt(native["fwd"]), _fmt(copy),
            ratio(ours["fwd"], keras_["fwd"]), ratio(ours["fwd"], native["fwd"]), ratio(ours["fwd"], copy),
            _fmt(ours["fwdbwd"]), _fmt(keras_["fwdbwd"]), _fmt(native["fwdbwd"]),
            ratio(ours["fwdbwd"], keras_["fwdbwd"]), ratio(ours["fwdbwd"], native["fwdbwd"]),
            ratio(ours["fwdbwd"], copy),
            "n/m" if "normkit" not in saved else f"{saved['normkit'] / mb:.1f} MB",
            "n/m" if "keras" not in saved else f"{saved['keras'] / mb:.1f} MB",
            "n/m" if "normkit" not in saved else f"{saved['normkit'] / r['input_bytes']:.2f}",
        ])  # fmt: skip
    return table


def merge_runs(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (backend, device, case): every time the median over the runs, the best native variant
    chosen again from those medians. A whole run is one process per backend, so this also evens out what
    differs between processes (memory layout, page-fault luck), which repetitions inside one cannot."""
    if len(runs) == 1:
        return runs[0]
    merged = []
    for group in zip(*runs, strict=True):
        first = group[0]
        ms: dict[str, dict[str, float | None]] = {}
        for variant, modes in first["ms"].items():
            ms[variant] = {}
            for mode in modes:
                values = [r["ms"][variant][mode] for r in group if r["ms"][variant][mode] is not None]
                ms[variant][mode] = statistics.median(values) if values else None
        best, best_name = best_native(ms)
        merged.append({**first, "ms": ms, "native_best": best, "native_best_name": best_name, "runs": len(group)})
    return merged


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(rows)]
    gpu = [r for r in rows if r["device"] == "gpu"]
    if gpu:
        lines += ["", gpu_section(gpu)]
    lines += ["", target_misses(rows)]
    heads = headlines(rows)
    if heads:
        lines += ["", heads]
    return "\n".join(lines) + "\n"


# The ratio targets: no slower than the Keras built-in, within 1.25x of the best native op.
KERAS_TARGET = 1.0
NATIVE_TARGET = 1.25


def target_misses(rows: list[dict[str, Any]]) -> str:
    """The (case, mode) pairs whose ratios miss a target, one line each, after a count."""
    misses = []
    for r in rows:
        for mode, label in (("fwd", "fwd"), ("fwdbwd", "f+b")):
            ours, builtin, native = r["ms"]["normkit"][mode], r["ms"]["keras"][mode], r["native_best"][mode]
            found = []
            if ours / builtin > KERAS_TARGET:
                found.append(f"{ours / builtin:.2f}x the built-in")
            if ours / native > NATIVE_TARGET:
                found.append(f"{ours / native:.2f}x native ({r['native_best_name'][mode]})")
                call = r["ms"].get("identity", {}).get("fwd") if r["backend"] == "torch" else None
                if call is not None:  # torch, eager: the fixed cost of a Keras layer call, which bare native calls skip
                    found[-1] += f"; a bare Keras layer call costs {call:.2f} of the {ours - native:.2f} ms gap"
            if found:
                misses.append(f"- {r['backend']} {r['device']} {r['label']} {label}: " + ", ".join(found))
    head = f"Ratio targets missed: {len(misses)} of {2 * len(rows)} (case, mode) pairs."
    return "\n".join([head, *misses])


# The headline speedups over the built-in: (backend, case, mode, factor).
HEADLINES = (
    ("jax", "gn_32x56x56x64", "fwd", 5.0),
    ("torch", "gn_32x56x56x64", "fwd", 5.0),
    ("tensorflow", "bn_32x56x56x64", "fwdbwd", 4.0),
    ("torch", "in_32x56x56x64", "fwdbwd", 4.0),
)


def headlines(rows: list[dict[str, Any]]) -> str:
    """The headline speedups beside what they ask of the native op: the built-in / best-native ratio of the
    same run is the speedup that merely matching the native op gives, and the identity layer's time is what
    the harness itself costs every variant (the loss and its gradient, a layer call)."""
    cols = ["backend", "case", "mode", "normkit", "built-in", "speedup", "target", "needs normkit <=",
            "best native", "built-in / native", "identity layer"]  # fmt: skip
    lines = []
    for backend, case, mode, factor in HEADLINES:
        for r in rows:
            if r["backend"] != backend or r["case"] != case:
                continue
            ms = r["ms"]
            ours, builtin, native = ms["normkit"][mode], ms["keras"][mode], r["native_best"][mode]
            identity = ms.get("identity", {}).get(mode)
            met = "met" if builtin / ours >= factor else "not met"
            lines.append("| " + " | ".join([
                backend, f"{r['label']} ({r['device']})", "f+b" if mode == "fwdbwd" else mode,
                f"{ours:.2f} ms", f"{builtin:.2f} ms", f"{builtin / ours:.1f}x", f"{factor:.0f}x: {met}",
                f"{builtin / factor:.2f} ms", f"{native:.2f} ms ({r['native_best_name'][mode]})",
                f"{builtin / native:.1f}x", "" if identity is None else f"{identity:.2f} ms",
            ]) + " |")  # fmt: skip
    if not lines:
        return ""
    head = ["Headline speedups (headline cases):", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(head + lines)


# Bytes a normalization must move at least, in units of the input: forward reads x and writes y (2); forward
# plus backward also reads x and dy and writes dx (5).
_MIN_TRAFFIC = {"fwd": 2, "fwdbwd": 5}


def gpu_section(rows: list[dict[str, Any]]) -> str:
    """On a GPU the floor is memory bandwidth: effective GB/s and its share of the copy's bandwidth."""
    cols = ["backend", "case", "fwd GB/s", "fwd % of copy bw", "f+b GB/s", "f+b % of copy bw", "copy GB/s"]
    lines = ["GPU: bytes moved / time (minimum traffic: 2x input forward, 5x forward+backward)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]  # fmt: skip
    for r in rows:
        size = r["input_bytes"]
        copy_bw = 2 * size / (r["ms"]["copy"]["fwd"] * 1e-3)
        cells = [r["backend"], r["label"]]
        for mode in ("fwd", "fwdbwd"):
            bw = _MIN_TRAFFIC[mode] * size / (r["ms"]["normkit"][mode] * 1e-3)
            cells += [f"{bw / 1e9:.0f}", f"{100 * bw / copy_bw:.0f}%"]
        cells.append(f"{copy_bw / 1e9:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m normkit.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", "--quick", action="store_true", help="tiny shapes, one repetition")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the table (markdown) and a .json beside it")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument(
        "--runs", type=int, default=1, help="whole runs (fresh processes); each time is the median over runs"
    )
    parser.add_argument(
        "--malloc", choices=("tuned", "glibc"), default="tuned",
        help="tuned: glibc heap reuse for big buffers (steadier times); glibc: the allocator's defaults",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.smoke else 7
    runs: list[list[dict[str, Any]]] = []
    for _ in range(args.runs):  # whole runs, backends in turn, merged cell by cell below
        rows: list[dict[str, Any]] = []
        for backend in args.backends.split(","):
            rows += run_backend(backend, args, "cpu")
            if not args.no_gpu and not args.smoke and _gpu_available(backend):
                rows += run_backend(backend, args, "gpu")
        runs.append(rows)
    rows = merge_runs(runs)
    text = markdown(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
