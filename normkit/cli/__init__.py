"""The `normkit` console command (also `python -m normkit`).

    normkit compare   trains the seed tutorial's model once per (normalization, batch size, seed) and compares them
    normkit diagram   draws which elements of an N x C x (H, W) input share one mean and variance

Keras fixes its backend when it is first imported, so this module imports neither keras nor normkit's layers
until a command runs: `--backend` sets KERAS_BACKEND before that import (and when keras is already imported with
another backend, as inside a test process, the command is re-run in a fresh `python -m normkit` process).
See docs/compare.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import NoReturn

from normkit.cli.errors import FAILURE, INTERRUPTED, USAGE, CLIError

BACKENDS = ("jax", "tensorflow", "torch")


class _Parser(argparse.ArgumentParser):
    """argparse with one error line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see `{self.prog} --help`)", USAGE)


def build_parser() -> argparse.ArgumentParser:
    from normkit.cli import options

    parser = _Parser(
        prog="normkit",
        description="Normalization layers for Keras 3: compare them on the seed tutorial's model, or draw them.",
    )
    parser.add_argument("--version", action="store_true", help="print normkit's version and exit")
    commands = parser.add_subparsers(dest="command", metavar="{compare,diagram}", parser_class=_Parser)
    options.add_compare_parser(commands)
    options.add_diagram_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line `argv` (default: sys.argv[1:]) and returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up logs are not for users
    parser = build_parser()
    prog = "normkit"
    try:
        args = parser.parse_args(argv)
        if args.version:
            from normkit import __version__

            print(f"normkit {__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return USAGE
        prog = f"normkit {args.command}"
        rerun = _select_backend(getattr(args, "backend", None), argv)
        if rerun is not None:
            return rerun
        if args.command == "compare":
            from normkit.cli.compare import run_compare

            return run_compare(args, argv)
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
