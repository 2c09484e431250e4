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


def _filtered(chunks: list[bytes], min_level: int) -> bytes:
    """What the backend-log filter passes on when `chunks` are written to standard error one after another."""
    from normkit.cli.backend_logs import _Filter

    read_fd, write_fd = os.pipe()
    out_read, out_write = os.pipe()
    log_filter = _Filter(read_fd, out_write, min_level)
    for chunk in chunks:
        log_filter._feed(chunk)
    log_filter._write(log_filter.pending)
    os.close(out_write)
    passed = b""
    while data := os.read(out_read, 65536):
        passed += data
    for fd in (read_fd, write_fd, out_read):
        os.close(fd)
    return passed


ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN_INFO = b"I0000 00:00:1796599950.226895   24447 port.cc:153] oneDNN custom operations are on.\n"
CUDA_ERROR = b"E0000 00:00:1700000000.000000    12 cuda_dnn.cc:8310] Unable to register cuDNN factory\n"
FATAL = b"F0000 00:00:1700000000.000000    12 check.cc:1] Check failed\n"


def test_backend_log_lines_are_dropped_below_the_level_and_everything_else_passes():
    python_warning = b"/x.py:3: UserWarning: keep me\n"
    text = ABSL_PREAMBLE + ONEDNN_INFO + python_warning + CUDA_ERROR + b"I am not a log line\n" + FATAL
    assert _filtered([text], min_level=3) == python_warning + b"I am not a log line\n" + FATAL
    assert _filtered([text], min_level=2) == python_warning + CUDA_ERROR + b"I am not a log line\n" + FATAL
    assert _filtered([text], min_level=0) == text


def test_backend_log_filter_handles_lines_split_across_writes_and_unfinished_lines():
    # a log line arriving in pieces is still recognized whole; a progress line rewritten with \r passes at once
    pieces = [ONEDNN_INFO[:3], ONEDNN_INFO[3:40], ONEDNN_INFO[40:], b"\r 50% ", b"\r100%"]
    assert _filtered(pieces, min_level=3) == b"\r 50% \r100%"
    assert _filtered([b"I0000 00:00:1.0 "], min_level=3) == b"I0000 00:00:1.0 "  # the end of the output


def test_the_filter_restores_standard_error(capfd):
    from normkit.cli.backend_logs import filtered_backend_logs

    with filtered_backend_logs():
        os.write(2, ONEDNN_INFO + b"kept\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "kept\nafter\n"
