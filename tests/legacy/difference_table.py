"""Prints, for the current Keras backend, each fixture: loaded or not, and the max |difference| from tf.keras 2.

    KERAS_BACKEND=jax python tests/legacy/difference_table.py     (also tensorflow, torch)

The differences are against the old stack's own outputs recorded in tests/legacy/fixtures/*.npz; `check` is
`normkit convert --check`'s figure (the converted .keras file against the loaded model).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import normkit  # noqa: E402
from normkit.cli.legacy import check_conversion  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def main() -> int:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    backend = keras.backend.backend()
    print("| fixture | backend | loaded | max diff predict | max diff training=True | convert --check |")
    print("|---|---|---|---|---|---|")
    for fixture in manifest["fixtures"]:
        expected = np.load(FIXTURES / fixture["expected"])
        weights = FIXTURES / fixture["weights"] if "weights" in fixture else None
        model = normkit.load_legacy_model(FIXTURES / fixture["path"], weights=weights)
        x = expected["x"]
        predict = np.max(np.abs(keras.ops.convert_to_numpy(model(x)) - expected["predict"]))
        training = np.max(np.abs(keras.ops.convert_to_numpy(model(x, training=True)) - expected["training"]))
        with tempfile.TemporaryDirectory() as tmp:
            model.save(Path(tmp) / "converted.keras")
            check = check_conversion(model, keras.saving.load_model(Path(tmp) / "converted.keras"))
        print(f"| {fixture['fixture']} | {backend} | yes | {predict:.2g} | {training:.2g} | {check:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
