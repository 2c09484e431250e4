"""`normkit convert` and `normkit inspect`: old tf.keras 2 / Addons files to Keras 3 files (docs/legacy-files.md).

    normkit convert OLD NEW.keras [--check]   load OLD with normkit.load_legacy_model, save NEW; --check reloads NEW
                                              and compares its predictions on a random batch with the loaded model
    normkit inspect OLD                       each layer, what it maps to, and what will not load (nothing is built)
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from normkit.cli.errors import FAILURE, CLIError, usage_error

CHECK_TOLERANCE = 1e-5  # max |difference| --check accepts between the legacy model and the reloaded file
CHECK_BATCH = 4


def add_convert_parser(commands: Any) -> None:
    p = commands.add_parser(
        "convert",
        help="convert a tf.keras 2 / Addons model file to a native Keras 3 .keras file",
        description=(
            "Loads OLD (tf.keras 2 .h5/.hdf5, a SavedModel directory, a Keras 2.13-2.15 .keras file) with "
            "normkit.load_legacy_model and writes NEW, a native Keras 3 .keras file. OLD is only read."
        ),
    )
    p.add_argument("old", metavar="OLD", help="the legacy model file or SavedModel directory")
    p.add_argument("new", metavar="NEW.keras", help="the Keras 3 file to write (must end in .keras)")
    p.add_argument(
        "--check",
        action="store_true",
        help=f"reload NEW and compare its predictions with the legacy model's (exit 1 above {CHECK_TOLERANCE:g})",
    )
    p.add_argument("--weights", help="the weights file (.h5) when OLD is a model config JSON")
    p.add_argument("--backend", choices=("jax", "tensorflow", "torch"), help="Keras backend (default: KERAS_BACKEND)")


def add_inspect_parser(commands: Any) -> None:
    p = commands.add_parser(
        "inspect",
        help="list a legacy model file's layers, what each maps to, and what will not load",
        description="Reads OLD's config only (the model is not built) and prints one line a layer; exit 1 if a layer "
        "will not load.",
    )
    p.add_argument("old", metavar="OLD", help="the legacy model file or SavedModel directory")
    p.add_argument("--backend", choices=("jax", "tensorflow", "torch"), help="Keras backend (default: KERAS_BACKEND)")


def run_convert(args: argparse.Namespace) -> int:
    if not args.new.endswith(".keras"):
        raise usage_error(f"NEW must be a .keras file, got {args.new!r}")
    if os.path.exists(args.old) and os.path.exists(args.new) and os.path.samefile(args.old, args.new):
        raise usage_error(f"NEW is OLD ({args.new!r}): the legacy file is never overwritten")
    import keras

    from normkit.compat import LegacyFileError, load_legacy_model

    try:
        model = load_legacy_model(args.old, weights=args.weights)
    except LegacyFileError as error:
        raise CLIError(str(error)) from None
    model.save(args.new)
    print(f"wrote {args.new} ({type(model).__name__} '{model.name}', {len(model.weights)} weights) from {args.old}")
    if not args.check:
        return 0
    difference = check_conversion(model, keras.saving.load_model(args.new))
    verdict = "ok" if difference <= CHECK_TOLERANCE else f"FAILED (above {CHECK_TOLERANCE:g})"
    print(f"check: max |difference| of predictions on a random batch of {CHECK_BATCH}: {difference:.3g} {verdict}")
    return 0 if difference <= CHECK_TOLERANCE else FAILURE


def check_conversion(legacy: Any, converted: Any, seed: int = 0) -> float:
    """Max |difference| between the two models' predictions on one random batch (float inputs N(0, 1); integer
    inputs, e.g. token ids, 0 and 1, which every Embedding accepts)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batch = []
    for tensor in legacy.inputs:
        shape = tuple(CHECK_BATCH if d is None else int(d) for d in tensor.shape)
        shape = (CHECK_BATCH, *shape[1:])
        dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
        if "int" in dtype:
            batch.append(rng.integers(0, 2, size=shape).astype(dtype))
        else:
            batch.append(rng.normal(size=shape).astype("float32"))
    x = batch[0] if len(batch) == 1 else batch
    differences = [
        float(np.max(np.abs(np.asarray(a, dtype="float64") - np.asarray(b, dtype="float64")), initial=0.0))
        for a, b in zip(_predict(legacy, x), _predict(converted, x), strict=True)
    ]
    return max(differences, default=0.0)


def _predict(model: Any, x: Any) -> list[Any]:
    # A direct inference call computes what predict() does, without compiling a predict function for one batch.
    import keras

    outputs = model(x, training=False)
    return [keras.ops.convert_to_numpy(y) for y in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def run_inspect(args: argparse.Namespace) -> int:
    from normkit.compat import LegacyFileError
    from normkit.compat.loader import read_source
    from normkit.compat.mapping import plan_conversion

    try:
        source = read_source(args.old)
    except LegacyFileError as error:
        raise CLIError(str(error)) from None
    print(f"{args.old}: {_FORMATS[source.format]}")
    if source.config is None:
        if source.format == "keras_v3":
            print("a native Keras 3 file: keras.saving.load_model reads it (nothing to convert)")
            return 0
        print("weights only (no model config): build the model and call normkit.load_legacy_weights(model, path)")
        return 0
    plan = plan_conversion(source.config)
    width = max((len(layer.path) for layer in plan.layers), default=0)
    for layer in plan.layers:
        status = f"NOT LOADABLE: {layer.problem}" if layer.problem else layer.new_class
        print(f"  {layer.path:<{width}}  {layer.name}  {layer.old_class} -> {status}")
    problems = plan.problems
    count = len(plan.layers)
    print(f"{count} layers, {len(problems)} will not load" if problems else f"{count} layers, all load")
    return FAILURE if problems else 0


_FORMATS = {
    "h5": "tf.keras 2 HDF5 file",
    "savedmodel": "tf.keras 2 SavedModel directory",
    "keras_v2": "Keras 2.13-2.15 .keras file",
    "keras_v3": "Keras 3 .keras file",
    "json": "model config JSON (needs a weights file)",
}
