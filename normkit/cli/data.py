"""The data sets `normkit compare` trains on, all as float32 images (N, 28, 28) in [0, 1] and int32 labels 0-9.

- digits: scikit-learn's 1,797 handwritten digits (8x8, values 0-16; shipped with scikit-learn, so offline).
  Each pixel becomes a 3x3 block (nearest-neighbour upscaling to 24x24) and the image is padded with 2 zero
  pixels on every side to 28x28 (MNIST too centres its digits in a 20x20 box inside 28x28); values / 16.
  Split: scikit-learn's train_test_split(test_size=0.2, stratify=labels, random_state=0): 1,437 train, 360 test.
- mnist, fashion_mnist: keras.datasets (downloads once to $KERAS_HOME/datasets or ~/.keras/datasets); / 255.
- a path to an .npz with x_train, y_train, x_test, y_test: images (N, 28, 28) or (N, 28, 28, 1), labels (N,)
  in 0..9; integer images are divided by 255, float images are used as they are.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from normkit.cli.errors import CLIError

IMAGE_SHAPE = (28, 28)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class Dataset:
    name: str
    description: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def fingerprint(self) -> str:
        """A hash of the arrays: a finished run is reused only for exactly the same data."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]


def load(name: str, train_limit: int | None = None, test_limit: int | None = None, train_on: str = "train") -> Dataset:
    """Loads a data set by name or .npz path; `train_on="test"` swaps the splits (the seed trains on x_test)."""
    if name == "digits":
        data = _digits()
    elif name in ("mnist", "fashion_mnist"):
        data = _keras_dataset(name)
    else:
        data = _npz(name)
    if train_on == "test":
        data = Dataset(
            data.name,
            data.description + "; trained on its test split, evaluated on its training split (as the seed)",
            data.x_test,
            data.y_test,
            data.x_train,
            data.y_train,
        )
    if train_limit is not None and train_limit < len(data.x_train):
        data.x_train, data.y_train = data.x_train[:train_limit], data.y_train[:train_limit]
        data.description += f"; first {len(data.x_train):,} training images"
    if test_limit is not None and test_limit < len(data.x_test):
        data.x_test, data.y_test = data.x_test[:test_limit], data.y_test[:test_limit]
        data.description += f"; first {len(data.x_test):,} test images"
    return data


def _digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise CLIError("the digits data set needs scikit-learn: pip install 'normkit[compare]'") from None
    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3))) / 16.0  # 8x8 -> 24x24, each pixel a 3x3 block
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype("float32")  # -> 28x28
    labels = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0
    )
    return Dataset(
        "digits",
        "scikit-learn digits (8x8 upscaled x3 to 24x24, padded to 28x28; 1,437 train / 360 test, stratified)",
        x_train,
        y_train,
        x_test,
        y_test,
    )


def _cache_hint(name: str) -> str:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    if name == "mnist":
        return f"put mnist.npz in {os.path.join(home, 'datasets')}/ or pass --dataset /path/to/mnist.npz"
    return (
        f"put the four Fashion-MNIST *-idx?-ubyte.gz files in {os.path.join(home, 'datasets', 'fashion-mnist')}/ "
        "or pass --dataset /path/to/file.npz"
    )


def _keras_dataset(name: str) -> Dataset:
    import keras

    loader = keras.datasets.mnist if name == "mnist" else keras.datasets.fashion_mnist
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # noqa: BLE001 - keras wraps network failures in several exception types
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CLIError(
            f"could not load {name} (no cached copy and the download failed: {reason}); {_cache_hint(name)}"
        ) from None
    title = "MNIST" if name == "mnist" else "Fashion-MNIST"
    return Dataset(
        name,
        f"{title} via keras.datasets ({len(x_train):,} train / {len(x_test):,} test)",
        (x_train / 255.0).astype("float32"),
        y_train.astype("int32"),
        (x_test / 255.0).astype("float32"),
        y_test.astype("int32"),
    )


def _npz(path: str) -> Dataset:
    if not os.path.isfile(path):
        raise CLIError(f"no such .npz file: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise CLIError(f"{path} lacks {', '.join(missing)} (an .npz needs x_train, y_train, x_test, y_test)")
            arrays = {k: f[k] for k in NPZ_KEYS}
    except CLIError:
        raise
    except Exception as error:  # noqa: BLE001 - a corrupt file can fail in numpy, zipfile or pickle checks
        raise CLIError(f"cannot read {path} as an .npz: {error}") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise CLIError(f"{path}: x_{split} must have shape (N, 28, 28) or (N, 28, 28, 1), got {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise CLIError(f"{path}: y_{split} must have shape ({len(x)},) to match x_{split}, got {y.shape}")
        if len(x) == 0:
            raise CLIError(f"{path}: x_{split} is empty")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
            raise CLIError(f"{path}: y_{split} must hold integer labels 0-9")
        x = x.astype("float32") / 255.0 if np.issubdtype(x.dtype, np.integer) else x.astype("float32")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y.astype("int32")
    return Dataset(
        os.path.abspath(path),
        f"{os.path.basename(path)} ({len(arrays['x_train']):,} train / {len(arrays['x_test']):,} test)",
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
    )
