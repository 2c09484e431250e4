"""Helpers for the CLI tests: a tiny .npz data set and PNG checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_npz(path: Path, n_train: int = 48, n_test: int = 20, seed: int = 0) -> Path:
    """A tiny MNIST-shaped data set: class k lights up row band k, plus noise (learnable in one epoch)."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        x = rng.integers(0, 60, size=(n, 28, 28)).astype("uint8")
        for i, label in enumerate(y):
            x[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        return x, y.astype("uint8")

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def png_pixels(path: Path) -> np.ndarray:
    """The image as an (H, W, 4) float array in [0, 1], read back with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def assert_figure(path: Path, min_width: int = 400, min_height: int = 300) -> np.ndarray:
    """The PNG exists, is at least this big, and is not blank (several colours, a good share non-white)."""
    assert path.is_file(), path
    image = png_pixels(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (width, height)
    rgb = image[..., :3]
    non_white = (rgb < 0.95).any(axis=-1).mean()
    assert non_white > 0.02, f"{path} looks blank ({non_white:.3%} non-white pixels)"
    colours = len(np.unique((rgb.reshape(-1, 3) * 255).astype(int), axis=0))
    assert colours > 10, f"{path} has only {colours} colours"
    return image
