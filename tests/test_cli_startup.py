"""The `normkit` console command's start-up: `--help` and `--version` import no Keras and print only their text,
and a command run through the same launcher still gets the whole package (Keras, the chosen backend, the layers)
and prints no backend log lines.

Each test starts a fresh Python process through `_normkit_console`, the module the installed `normkit` script
calls, without TF_CPP_MIN_LOG_LEVEL set, as a user's shell would.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import pytest

import normkit

HEAVY_MODULES = ("keras", "tensorflow", "jax", "torch")


def _run_console(*args: str, importtime: bool = False, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["KERAS_BACKEND"] = keras.backend.backend()
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "_normkit_console", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _imported_packages(importtime_log: str) -> set[str]:
    """The top-level packages `python -X importtime` reports as imported (its lines end with `| name`)."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_no_keras(flag):
    result = _run_console(flag, importtime=True)
    assert result.returncode == 0, result.stderr
    imported = _imported_packages(result.stderr)
    assert "normkit" in imported  # the log is read correctly: the package itself shows up
    assert imported.isdisjoint(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))


def test_help_prints_only_the_help():
    result = _run_console("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout.startswith("usage: normkit")
    assert "compare" in result.stdout and "diagram" in result.stdout


def test_version_prints_only_the_version():
    result = _run_console("--version")
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout == f"normkit {normkit.__version__}\n"


def test_a_command_through_the_launcher_gets_the_package_and_prints_no_backend_logs(tmp_path):
    # `diagram` builds real layers: the launcher's deferred package __init__ must have run, on the backend asked.
    out = tmp_path / "group.png"
    result = _run_console("diagram", "--layer", "group", "--groups", "2", "--out", str(out), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert out.stat().st_size > 0
