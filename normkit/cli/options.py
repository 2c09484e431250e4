"""The arguments of `normkit compare` and `normkit diagram`, their presets and their checks.

Only argparse and the standard library here: `normkit --help` must not import keras.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any

from normkit.cli.errors import usage_error

# Every normalization `compare` knows, in display order (normkit.cli.norms builds them).
NORMS = ("none", "batch", "batch-renorm", "ghost-batch", "group", "instance", "layer", "rms", "frn")
DATASETS = ("digits", "mnist", "fashion_mnist")
PRESETS = ("seed-tutorial", "small-batch")
MODELS = ("seed", "deep")
BACKEND_CHOICES = ("jax", "tensorflow", "torch")

# The default study: sized to finish in under 3 minutes on 2 CPU cores with the JAX backend (docs/compare.md).
DEFAULTS: dict[str, Any] = {
    "norms": "all",
    "dataset": "digits",
    "batch_sizes": (2, 4, 8, 16, 32, 64),
    "epochs": 1,
    "seeds": (0, 1),
    "train_limit": None,
    "test_limit": None,
    "last_batch": "drop",
    "ghost_batch_size": 4,
    "train_on": "train",
    "model": "seed",
    "base_lr": None,
}
# --quick: a smoke test of the whole pipeline (about 20 seconds).
QUICK: dict[str, Any] = {"batch_sizes": (4, 32), "epochs": 1, "seeds": (0,)}
# --preset seed-tutorial: the seed page's run, model.fit(x_test, y_test) for one epoch at Keras's batch size 32;
# the 60,000 training images are then the held-out set.
SEED_TUTORIAL: dict[str, Any] = {
    "norms": "group,instance,layer",
    "dataset": "mnist",
    "batch_sizes": (32,),
    "epochs": 1,
    "seeds": (0, 1, 2),
    "last_batch": "keep",
    "train_on": "test",
}
# --preset small-batch: Wu & He's Figure 1 in small: the deep model (a normalization after each of its 6
# convolutions) over batch sizes 2..64 with the learning rate scaled linearly with the batch size, on the first
# 3,000 Fashion-MNIST training images (--dataset digits for the offline set), and enough epochs ("auto") that
# batch norm's moving statistics converge at the largest batch size (normkit.cli.models.epochs_to_converge).
SMALL_BATCH: dict[str, Any] = {
    "norms": "batch,batch-renorm,ghost-batch,group",
    "dataset": "fashion_mnist",
    "model": "deep",
    "batch_sizes": (2, 4, 8, 16, 32, 64),
    "epochs": "auto",
    "seeds": (0, 1, 2),
    "train_limit": 3000,
    "test_limit": 2000,
    "last_batch": "drop",
}
# The accuracies the TensorFlow Addons Normalizations tutorial prints after its one epoch.
SEED_PAGE_ACCURACY = {"group": 0.7722, "instance": 0.7194, "layer": 0.8049}


@dataclass
class CompareSettings:
    """The resolved study: presets applied, then explicit flags on top."""

    norms: tuple[str, ...]
    dataset: str
    batch_sizes: tuple[int, ...]
    epochs: int | str  # an int, or "auto" until the data set is loaded (see models.epochs_to_converge)
    seeds: tuple[int, ...]
    out: str
    train_limit: int | None
    test_limit: int | None
    last_batch: str
    ghost_batch_size: int
    train_on: str
    preset: str | None
    quick: bool
    progress: str
    norms_explicit: bool = False
    model: str = "seed"
    base_lr: float | None = None  # deep model: SGD learning rate at batch size 32 (scaled linearly with B)
    backend_all: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def add_compare_parser(commands: Any) -> None:
    p = commands.add_parser(
        "compare",
        allow_abbrev=False,  # `--backend all` rewrites --backend and --out for its child processes
        help="train the seed tutorial's model with each normalization and compare them",
        description=(
            "Trains the seed tutorial's model (Reshape 28x28x1, Conv2D 10 3x3, the normalization, Flatten, "
            "Dense 128 relu, Dropout 0.2, Dense 10 softmax; adam) once per (normalization, batch size, seed), "
            "then prints a table and writes results.csv, results.json, report.md and figures to --out "
            "(--model deep: a 6-convolution model with the normalization after each; --preset small-batch: "
            "Wu & He's Figure 1 in small). "
            "Finished runs are saved one by one: rerun the same command to resume. Default: "
            "all norms, scikit-learn's digits, batch sizes 2..64, 1 epoch, seeds 0,1 (under 3 minutes on 2 cores)."
        ),
    )
    p.add_argument("--norms", help=f"comma-separated, or 'all' (default): {', '.join(NORMS)}")
    p.add_argument(
        "--dataset",
        help="digits (default, offline: scikit-learn's 8x8 digits scaled x3 and padded to 28x28), mnist, "
        "fashion_mnist (keras.datasets cache), or a path to an .npz with x_train, y_train, x_test, y_test",
    )
    p.add_argument(
        "--model",
        choices=MODELS,
        help="seed (default): the seed tutorial's one-convolution model with adam; deep: 3 stages of 2 "
        "convolutions (8, 16, 32 channels), the normalization after each, global average pooling, SGD with "
        "momentum 0.9 and a learning rate linear in the batch size",
    )
    p.add_argument(
        "--base-lr",
        help="deep model: SGD learning rate at batch size 32; batch size B uses base-lr * B / 32 (default 0.05)",
    )
    p.add_argument("--batch-sizes", help="comma-separated batch sizes (default 2,4,8,16,32,64)")
    p.add_argument(
        "--epochs",
        help="epochs per run (default 1), or 'auto': enough that batch norm's moving statistics converge "
        "(momentum**steps < 1%%) at the largest batch size",
    )
    p.add_argument("--seeds", help="comma-separated random seeds, one run each (default 0,1)")
    p.add_argument(
        "--backend",
        choices=(*BACKEND_CHOICES, "all"),
        help="Keras backend (default: KERAS_BACKEND); all: the same study on jax, tensorflow and torch, one "
        "process each (--out/<backend>), then the accuracies side by side",
    )
    p.add_argument("--out", help="output directory (default ./normkit-compare)")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="seed-tutorial: the seed page's exact run; small-batch: the deep model on Fashion-MNIST over batch "
        "sizes 2..64, 3 seeds, as Wu & He's Figure 1 (see docs)",
    )
    p.add_argument("--quick", action="store_true", help="a small study: batch sizes 4,32, 1 epoch, seed 0")
    p.add_argument("--train-limit", help="use only the first N training images (e.g. 10000 for MNIST)")
    p.add_argument("--test-limit", help="use only the first N test images")
    p.add_argument(
        "--last-batch",
        choices=("drop", "keep"),
        help="drop (default): each epoch trains on floor(n/B)*B freshly shuffled images, so every step has B "
        "samples; keep: a smaller last batch, as Keras's fit does",
    )
    p.add_argument("--ghost-batch-size", help="ghost-batch: samples per ghost batch V, gcd(B, V) is used (default 4)")
    p.add_argument(
        "--progress", choices=("auto", "rich", "plain", "none"), default="auto", help="progress display (default auto)"
    )


def add_diagram_parser(commands: Any) -> None:
    p = commands.add_parser(
        "diagram",
        help="draw which elements share one mean and variance (Wu & He 2018, Figure 2)",
        description=(
            "Draws the N x C x (H,W) cube with the elements that share one mean and variance highlighted, "
            "computed from the layer's own reduction axes. Without --layer: BatchNormalization, "
            "LayerNormalization, InstanceNormalization, GroupNormalization and the seed's LayerNormalization(axis=3)."
        ),
    )
    p.add_argument(
        "--layer", choices=("batch", "layer", "instance", "group", "rms", "frn"), help="draw only this configuration"
    )
    p.add_argument("--groups", help="GroupNormalization groups (default 5, as in the seed)")
    p.add_argument("--axis", help="the layer's axis: an int, or comma-separated ints for layer/batch (default -1)")
    p.add_argument("--shape", help="input shape N,H,W,C (or N,C,H,W for --axis 1), default 4,2,2,10")
    p.add_argument("--backend", choices=("jax", "tensorflow", "torch"), help="Keras backend (default: KERAS_BACKEND)")
    p.add_argument("--out", default="normkit-diagram.png", help="PNG to write (default normkit-diagram.png)")


def parse_int(name: str, text: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage_error(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise usage_error(f"{name} must be at least {minimum}, got {value}")
    return value


def parse_positive_float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise usage_error(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise usage_error(f"{name} must be a positive number, got {text!r}")
    return value


def parse_int_list(name: str, text: str, minimum: int) -> tuple[int, ...]:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise usage_error(f"{name} needs at least one value, got {text!r}")
    values = tuple(parse_int(name, part, minimum) for part in parts)
    if len(set(values)) != len(values):
        raise usage_error(f"{name} has a repeated value: {text!r}")
    return values


def parse_norms(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return NORMS
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in NORMS]
    if unknown or not names:
        raise usage_error(f"unknown norm {', '.join(map(repr, unknown)) or repr(text)}; choose from {', '.join(NORMS)}")
    if len(set(names)) != len(names):
        raise usage_error(f"--norms has a repeated value: {text!r}")
    return names


def resolve_compare(args: argparse.Namespace) -> CompareSettings:
    """Applies --quick, then --preset, then the explicit flags, and checks every value."""
    values = dict(DEFAULTS)
    if args.quick:
        values.update(QUICK)
    if args.preset == "seed-tutorial":
        values.update(SEED_TUTORIAL)
    elif args.preset == "small-batch":
        values.update(SMALL_BATCH)
    if args.model is not None:
        values["model"] = args.model
    if args.base_lr is not None:
        if values["model"] != "deep":
            raise usage_error(
                f"--base-lr applies to --model deep only (the seed model uses adam), got --model {values['model']}"
            )
        values["base_lr"] = parse_positive_float("--base-lr", args.base_lr)
    if args.norms is not None:
        values["norms"] = args.norms
    if args.dataset is not None:
        values["dataset"] = args.dataset
    if args.batch_sizes is not None:
        values["batch_sizes"] = parse_int_list("--batch-sizes", args.batch_sizes, 1)
    if args.epochs is not None:
        if args.epochs.strip() == "auto":
            values["epochs"] = "auto"
        elif not args.epochs.strip().lstrip("-").isdigit():
            raise usage_error(f"--epochs must be an integer or auto, got {args.epochs!r}")
        else:
            values["epochs"] = parse_int("--epochs", args.epochs)
    if args.seeds is not None:
        values["seeds"] = parse_int_list("--seeds", args.seeds, 0)
    if args.train_limit is not None:
        values["train_limit"] = parse_int("--train-limit", args.train_limit)
    if args.test_limit is not None:
        values["test_limit"] = parse_int("--test-limit", args.test_limit)
    if args.last_batch is not None:
        values["last_batch"] = args.last_batch
    if args.ghost_batch_size is not None:
        values["ghost_batch_size"] = parse_int("--ghost-batch-size", args.ghost_batch_size)
    dataset = str(values["dataset"])
    if dataset not in DATASETS and not dataset.endswith(".npz"):
        raise usage_error(f"unknown dataset {dataset!r}; choose digits, mnist, fashion_mnist or a path to an .npz")
    out = args.out or "normkit-compare"
    return CompareSettings(
        norms=parse_norms(str(values["norms"])),
        dataset=dataset,
        batch_sizes=tuple(values["batch_sizes"]),
        epochs=values["epochs"] if values["epochs"] == "auto" else int(values["epochs"]),
        seeds=tuple(values["seeds"]),
        out=out,
        train_limit=values["train_limit"],
        test_limit=values["test_limit"],
        last_batch=str(values["last_batch"]),
        ghost_batch_size=int(values["ghost_batch_size"]),
        train_on=str(values["train_on"]),
        preset=args.preset,
        quick=bool(args.quick),
        progress=args.progress,
        norms_explicit=args.norms is not None or args.preset is not None,
        model=str(values["model"]),
        base_lr=values["base_lr"],
        backend_all=args.backend == "all",
    )

