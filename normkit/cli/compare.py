"""`normkit compare`: one training run per (normalization, batch size, seed), saved one by one, then a report.

A run is keyed by a hash of everything that determines it (norm and its exact layer call, batch size, seed,
epochs, the data's fingerprint, backend, last-batch policy). Each finished run is written atomically to
<out>/runs/<key>.json, so an interrupted study rerun with the same arguments skips what is done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from normkit.cli import data as data_mod
from normkit.cli import models, options, progress
from normkit.cli import norms as norms_mod
from normkit.cli.errors import INTERRUPTED, CLIError

RECORD_VERSION = 1  # bump when the model or the training loop changes: old runs are then not reused
CURVE_POINTS = 20  # training-loss checkpoints recorded per epoch (for the training-curve figure)


@dataclass(frozen=True)
class RunPlan:
    norm: str
    batch_size: int
    seed: int
    key: str
    identity: dict[str, Any]


def run_compare(args: argparse.Namespace, argv: Sequence[str]) -> int:
    settings = options.resolve_compare(args)
    out = prepare_out_dir(settings.out)
    _require_plotting()
    if settings.backend_all:
        from normkit.cli import backends

        return backends.run_all(settings, argv)
    dataset = data_mod.load(settings.dataset, settings.train_limit, settings.test_limit, settings.train_on)
    _check_batch_sizes(settings, dataset)
    if settings.epochs == "auto":
        settings.epochs = models.epochs_to_converge(len(dataset.x_train), max(settings.batch_sizes))

    import keras

    backend = keras.backend.backend()
    enable_compile_cache(backend)
    norms = _available_norms(settings)
    plans = plan_runs(settings, norms, dataset, backend)
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    done = {p.key: r for p in plans if (r := load_record(runs_dir, p.key)) is not None}

    print(
        f"normkit compare: {len(plans)} runs ({len(norms)} norms x {len(settings.batch_sizes)} batch sizes x "
        f"{len(settings.seeds)} seeds, {settings.epochs} epoch(s), {settings.model} model) on "
        f"{dataset.description}; backend {backend}",
        flush=True,
    )
    if done:
        print(f"resuming: {len(done)} of {len(plans)} runs already finished in {runs_dir}", flush=True)

    display = progress.make(settings.progress)
    display.start(len(plans), len(done))
    try:
        for plan in plans:
            if plan.key in done:
                continue
            record = train_one(plan, settings, dataset, backend, display)
            save_record(runs_dir, record)
            done[plan.key] = record
            display.end_run(_label(plan), _summary(record))
    except KeyboardInterrupt:
        display.stop()
        print(
            f"normkit compare: interrupted; {len(done)} of {len(plans)} runs are finished and saved in {runs_dir}. "
            "Run the same command again to continue.",
            file=sys.stderr,
        )
        return INTERRUPTED
    display.stop()

    from normkit.cli import report

    records = [done[p.key] for p in plans]
    command = shlex.join(["normkit", *argv])
    written = report.write_all(out, settings, dataset, records, command, versions(backend))
    report.print_table(records, settings)
    print(f"\nreport: {written['report']}")
    for path in written["figures"]:
        print(f"figure: {path}")
    print(f"data:   {written['csv']}, {written['json']}")
    return 0


def enable_compile_cache(backend: str) -> str | None:
    """On JAX, a persistent compilation cache: every seed of a (norm, batch size) compiles the same programs, so
    only the first seed pays for XLA compilation (halves the default study's time) and reruns pay nothing.

    Where: $NORMKIT_COMPILE_CACHE, else $XDG_CACHE_HOME/normkit/jax (~/.cache/normkit/jax); "off" disables it.
    A cache the user configured for JAX is left as it is. Cached programs are the ones XLA would compile, so
    results do not change.
    """
    if backend != "jax":
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return str(jax.config.jax_compilation_cache_dir)
    path = os.environ.get("NORMKIT_COMPILE_CACHE")
    if path == "off":
        return None
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "normkit", "jax")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # no writable cache: compile every time
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def prepare_out_dir(out: str) -> str:
    """Creates --out and proves it writable now, rather than after an hour of training."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise CLIError(f"cannot write to --out {out}: {error.strerror or error}") from None
    return out


def _require_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError("normkit compare needs matplotlib for its figures: pip install 'normkit[compare]'") from None


def _check_batch_sizes(settings: options.CompareSettings, dataset: data_mod.Dataset) -> None:
    n = len(dataset.x_train)
    too_big = [b for b in settings.batch_sizes if b > n]
    if too_big:
        raise CLIError(f"batch size {too_big[0]} is larger than the {n} training images")


def _available_norms(settings: options.CompareSettings) -> tuple[str, ...]:
    """The norms to run. An explicitly requested norm this normkit cannot build is an error; a default one is
    skipped with a note (e.g. renorm before BatchNormalization grows it, rms/frn before they exist)."""
    chosen = []
    probe_batch = max(settings.batch_sizes)
    for name in settings.norms:
        reason = norms_mod.unavailable_reason(name, probe_batch, settings.ghost_batch_size)
        if reason is None:
            chosen.append(name)
        elif settings.norms_explicit:
            raise CLIError(f"norm {name!r} is not available in this normkit ({reason})")
        elif name not in ("rms", "frn"):
            print(f"note: skipping norm {name!r}, not available in this normkit ({reason})", file=sys.stderr)
    if not chosen:
        raise CLIError("none of the requested norms is available")
    return tuple(chosen)


def plan_runs(
    settings: options.CompareSettings, norms: Sequence[str], dataset: data_mod.Dataset, backend: str
) -> list[RunPlan]:
    """Every run of the study, seed by seed (a study stopped early then has whole seeds to report)."""
    fingerprint = dataset.fingerprint()
    plans = []
    for seed in settings.seeds:
        for batch_size in settings.batch_sizes:
            for norm in norms:
                call = models.layer_call(settings.model, norm, batch_size, settings.ghost_batch_size)
                identity = {
                    "record_version": RECORD_VERSION,
                    "norm": norm,
                    "layer_call": call,
                    "batch_size": batch_size,
                    "seed": seed,
                    "epochs": settings.epochs,
                    "dataset": dataset.name,
                    "data_fingerprint": fingerprint,
                    "backend": backend,
                    "last_batch": settings.last_batch,
                }
                if settings.model != "seed":  # the seed model's runs keep the keys they had before --model
                    identity["model"] = settings.model
                    identity["learning_rate"] = models.learning_rate(settings.base_lr, batch_size)
                key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
                plans.append(RunPlan(norm, batch_size, seed, key, identity))
    return plans


def _label(plan: RunPlan) -> str:
    return f"{plan.norm:<12} batch {plan.batch_size:<4} seed {plan.seed}"


def _summary(record: dict[str, Any]) -> str:
    return (
        f"test acc {record['test_accuracy']:.4f}  loss {record['test_loss']:.4f}  "
        f"{record['seconds_per_epoch']:.1f} s/epoch"
    )


def train_one(
    plan: RunPlan,
    settings: options.CompareSettings,
    dataset: data_mod.Dataset,
    backend: str,
    display: progress.Progress,
) -> dict[str, Any]:
    """Trains and evaluates one model; returns its record (everything the report needs)."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(plan.seed)  # weights, dropout
    rng = np.random.default_rng(plan.seed)  # the epochs' shuffles
    model = models.build(settings.model, plan.norm, plan.batch_size, settings.ghost_batch_size, settings.base_lr)
    x, y = dataset.x_train, dataset.y_train
    n, bs = len(x), plan.batch_size
    # ghost batches need B samples in every step, so ghost-batch always drops the last partial batch
    drop = settings.last_batch == "drop" or plan.norm == "ghost-batch"
    used = n - n % bs if drop else n
    steps = -(-used // bs)
    eval_batch = min(len(dataset.x_test), 1000)
    callback = _step_callback(display, steps, bs, used)
    history: dict[str, list[float]] = {k: [] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
    epoch_seconds: list[float] = []
    display.start_run(_label(plan), steps * settings.epochs)
    for epoch in range(settings.epochs):
        order = rng.permutation(n)[:used]
        callback.epoch = epoch
        start = time.perf_counter()
        fit = model.fit(x[order], y[order], batch_size=bs, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
        epoch_seconds.append(time.perf_counter() - start)
        evaluation = model.evaluate(
            dataset.x_test, dataset.y_test, batch_size=eval_batch, verbose=0, return_dict=True
        )
        history["train_loss"].append(float(fit.history["loss"][-1]))
        history["train_accuracy"].append(float(fit.history["accuracy"][-1]))
        history["test_loss"].append(float(evaluation["loss"]))
        history["test_accuracy"].append(float(evaluation["accuracy"]))
    norm_layers = models.norm_layers(model)
    # The moving statistics estimate the statistics of the training data seen in inference mode. Checking
    # them against the data costs a forward pass (and a compilation) per model, a large share of a seed-model
    # run: there only for plain batch norm (the other variants get the convergence share momentum**steps).
    check_data = plan.norm == "batch" or settings.model != "seed"
    probe_images = x[: min(n, 1000)] if check_data else None
    moving = models.moving_statistics_check(model, probe_images, steps * settings.epochs)
    return {
        **plan.identity,
        "key": plan.key,
        "train_on": settings.train_on,
        "train_images": int(used),
        "test_images": len(dataset.x_test),
        "steps_per_epoch": int(steps),
        "test_accuracy": history["test_accuracy"][-1],
        "test_loss": history["test_loss"][-1],
        "train_accuracy": history["train_accuracy"][-1],
        "train_loss": history["train_loss"][-1],
        "epoch_seconds": epoch_seconds,
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        "params": int(model.count_params()),
        "norm_params": int(sum(layer.count_params() for layer in norm_layers)),
        "model": settings.model,
        "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        "moving_statistics": moving,
        "history": history,
        "curve": callback.curve,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _step_callback(
    display: progress.Progress, steps: int, batch_size: int, images_per_epoch: int
) -> Any:
    """A Keras callback that advances the per-run bar each step and samples Keras's running training
    loss/accuracy (CURVE_POINTS per epoch, with the images seen so far) for the training-curve figure."""
    import keras

    class StepCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.every = max(1, steps // CURVE_POINTS)
            self.epoch = 0
            self.curve: dict[str, list[float]] = {"epoch": [], "images": [], "loss": [], "accuracy": []}

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            display.advance(1)
            step = batch + 1
            if logs and (step % self.every == 0 or step == steps):
                self.curve["epoch"].append(self.epoch + step / steps)
                seen = self.epoch * images_per_epoch + min(step * batch_size, images_per_epoch)
                self.curve["images"].append(float(seen))
                self.curve["loss"].append(float(logs["loss"]))
                self.curve["accuracy"].append(float(logs["accuracy"]))

    return StepCallback()


def record_path(runs_dir: str, key: str) -> str:
    return os.path.join(runs_dir, f"{key}.json")


def load_record(runs_dir: str, key: str) -> dict[str, Any] | None:
    """A finished run, or None (missing, or unreadable: a run is only trusted if its file is whole)."""
    try:
        with open(record_path(runs_dir, key), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if record.get("key") == key else None


def save_record(runs_dir: str, record: dict[str, Any]) -> None:
    """Writes the run's JSON to a temporary file in the same folder, then renames it: never half a file."""
    write_atomic(record_path(runs_dir, record["key"]), json.dumps(record, indent=1, sort_keys=True))


def write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def versions(backend: str) -> dict[str, str]:
    import keras

    import normkit

    found = {
        "normkit": normkit.__version__,
        "keras": keras.__version__,
        "backend": backend,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": str(os.cpu_count()),
    }
    module = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}.get(backend)
    if module and module in sys.modules:
        found[module] = str(getattr(sys.modules[module], "__version__", "?"))
    return found
