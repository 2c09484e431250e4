"""The seed tutorial (TensorFlow Addons "Normalizations") run as written, in the old stack, over several seeds.

The old stack is tf.keras 2 with TensorFlow Addons; it needs its own virtual environment (Python 3.11), e.g.:

    python3.11 -m venv /some/where/legacy-venv
    /some/where/legacy-venv/bin/pip install "tensorflow-cpu==2.15.1" "tensorflow-addons==0.23.0" "numpy<2" h5py
    python scripts/legacy/seed_tutorial.py --python /some/where/legacy-venv/bin/python \
        --out docs/data/seed_tutorial_old_stack.json

Run with any Python, this script re-runs itself with `--python` (the old stack's interpreter) and writes the
results file. MNIST comes from tf.keras's cache (~/.keras/datasets/mnist.npz; downloaded once if online).

Each model is the tutorial's code verbatim: Reshape, Conv2D(10, 3x3), the normalization, Flatten, Dense(128,
relu), Dropout(0.2), Dense(10, softmax), compiled with adam, then `model.fit(x_test, y_test)`: one epoch on the
10,000 test images at Keras's default batch size 32. The one addition is `tf.keras.utils.set_random_seed(seed)`
before each model is built, so that a run can be repeated (the tutorial sets no seed). The accuracy recorded is
what `fit` prints (Keras's running training accuracy over the epoch, as on the tutorial's page); the model is
also evaluated on the 60,000 training images it never saw.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

NORMS = ("group", "layer", "instance")  # the tutorial's order


def _model(tf, tfa, norm: str):  # noqa: ANN001, ANN202 - runs in the old stack, untyped on purpose
    if norm == "group":
        layer = tfa.layers.GroupNormalization(groups=5, axis=3)
    elif norm == "layer":
        layer = tf.keras.layers.LayerNormalization(axis=3, center=True, scale=True)
    else:
        layer = tfa.layers.InstanceNormalization(
            axis=3, center=True, scale=True, beta_initializer="random_uniform", gamma_initializer="random_uniform"
        )
    model = tf.keras.models.Sequential(
        [
            tf.keras.layers.Reshape((28, 28, 1), input_shape=(28, 28)),
            tf.keras.layers.Conv2D(filters=10, kernel_size=(3, 3), data_format="channels_last"),
            layer,
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(128, activation="relu"),
            tf.keras.layers.Dropout(0.2),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def run_in_old_stack(seeds: list[int]) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import tensorflow_addons as tfa

    mnist = tf.keras.datasets.mnist
    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    x_train, x_test = x_train / 255.0, x_test / 255.0
    runs = []
    for seed in seeds:
        for norm in NORMS:
            tf.keras.utils.set_random_seed(seed)
            model = _model(tf, tfa, norm)
            start = time.perf_counter()
            history = model.fit(x_test, y_test, verbose=0)
            seconds = time.perf_counter() - start
            held_out_loss, held_out_accuracy = model.evaluate(x_train, y_train, batch_size=1000, verbose=0)
            runs.append(
                {
                    "norm": norm,
                    "seed": seed,
                    "train_accuracy": float(history.history["accuracy"][-1]),
                    "train_loss": float(history.history["loss"][-1]),
                    "held_out_accuracy": float(held_out_accuracy),
                    "held_out_loss": float(held_out_loss),
                    "fit_seconds": round(seconds, 2),
                }
            )
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    summary = {}
    for norm in NORMS:
        values = np.array([r["train_accuracy"] for r in runs if r["norm"] == norm])
        held_out = np.array([r["held_out_accuracy"] for r in runs if r["norm"] == norm])
        summary[norm] = {
            "train_accuracy_mean": float(values.mean()),
            "train_accuracy_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "held_out_accuracy_mean": float(held_out.mean()),
        }
    return {
        "what": "TensorFlow Addons 'Normalizations' tutorial, model.fit(x_test, y_test): 1 epoch, batch 32, "
        "on the 10,000 MNIST test images; train_accuracy is fit's running accuracy, held_out_* is on the 60,000 "
        "training images",
        "seeds": seeds,
        "versions": {
            "tensorflow": tf.__version__,
            "tensorflow_addons": tfa.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}",
        },
        "summary": summary,
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="the old stack's python (tensorflow 2.15 + tensorflow-addons)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--out", default="seed_tutorial_old_stack.json", help="results file to write (JSON)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)  # set when re-run in the old stack
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.inner:
        print(json.dumps(run_in_old_stack(seeds)))
        return 0
    if not args.python:
        parser.error("--python is required: the interpreter of a venv with tensorflow-cpu 2.15 + tensorflow-addons")
    completed = subprocess.run(
        [args.python, os.path.abspath(__file__), "--inner", "--seeds", args.seeds],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        print(f"seed_tutorial.py: the old stack's run failed (exit {completed.returncode})", file=sys.stderr)
        return completed.returncode
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    for norm, row in result["summary"].items():
        print(
            f"{norm:<9} fit accuracy {row['train_accuracy_mean']:.4f} ± {row['train_accuracy_std']:.4f}  "
            f"held-out {row['held_out_accuracy_mean']:.4f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
