"""The `normkit` console command (also `python -m normkit`).

    normkit compare   trains the seed tutorial's model once per (normalization, batch size, seed) and compares them
    normkit diagram   draws which elements of an N x C x (H, W) input share one mean and variance
    normkit convert   converts a tf.keras 2 / Addons model file to a Keras 3 .keras file (docs/legacy-files.md)
    normkit inspect   lists a legacy model file's layers and what each maps to

Keras fixes its backend when it is first imported, so this module imports neither keras nor normkit's layers
until a command runs: `--backend` sets KERAS_BACKEND before that import (and when keras is already imported with
another backend, as inside a test process, the command is re-run in a fresh `python -m normkit` process). The
console command's launcher (`_normkit_console`) defers the package's own `__init__`, which imports Keras, so that
`normkit --help` and `normkit --version` answer at once; `finish_importing_normkit` runs it before a command.
See docs/compare.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import NoReturn

from normkit.cli.backend_logs import filtered_backend_logs
from normkit.cli.errors import FAILURE, INTERRUPTED, USAGE, CLIError

BACKENDS = ("jax", "tensorflow", "torch")


class _Parser(argparse.ArgumentParser):
    """argparse with one error line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see `{self.prog} --help`)", USAGE)


def build_parser() -> argparse.ArgumentParser:
    from normkit.cli import legacy, options

    parser = _Parser(
        prog="normkit",
        description="Normalization layers for Keras 3: compare them on the seed tutorial's model, or draw them.",
    )
    parser.add_argument("--version", action="store_true", help="print normkit's version and exit")
    commands = parser.add_subparsers(dest="command", metavar="{compare,diagram,convert,inspect}", parser_class=_Parser)
    options.add_compare_parser(commands)
    options.add_diagram_parser(commands)
    legacy.add_convert_parser(commands)
    legacy.add_inspect_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line `argv` (default: sys.argv[1:]) and returns the exit status."""
    with filtered_backend_logs():  # TensorFlow's C++ start-up lines are not for users (normkit/cli/backend_logs.py)
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up logs are not for users
    parser = build_parser()
    prog = "normkit"
    try:
        args = parser.parse_args(argv)
        if args.version:
            from normkit._version import __version__

            print(f"normkit {__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return USAGE
        prog = f"normkit {args.command}"
        rerun = _select_backend(getattr(args, "backend", None), argv)
        if rerun is not None:
            return rerun
        finish_importing_normkit()
        if args.command == "compare":
            from normkit.cli.compare import run_compare

            return run_compare(args, argv)
        if args.command in ("convert", "inspect"):
            from normkit.cli.legacy import run_convert, run_inspect

            return run_convert(args) if args.command == "convert" else run_inspect(args)
        from normkit.cli.diagram import run_diagram

        return run_diagram(args)
    except CLIError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.code
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except OSError as error:
        # e.g. a full disk while writing results: still one line, not a traceback
        print(f"{prog}: error: {error}", file=sys.stderr)
        return FAILURE


def finish_importing_normkit() -> None:
    """Runs normkit's `__init__` (Keras, the backend, the layers' registration) if the launcher deferred it."""
    package = sys.modules["normkit"]
    if package.__dict__.pop("_init_deferred", False):
        package.__spec__.loader.exec_module(package)


def _select_backend(backend: str | None, argv: list[str]) -> int | None:
    """Makes `backend` the Keras backend; returns an exit status if the command had to run in a new process."""
    if backend is None or backend == "all":  # all: compare runs one child process per backend
        return None
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = backend
        return None
    if keras.backend.backend() == backend:
        return None
    # Keras is already imported with another backend (e.g. a test process): run the command afresh.
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.call([sys.executable, "-m", "normkit", *argv], env=env)
