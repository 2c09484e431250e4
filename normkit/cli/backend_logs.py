"""Keeps the backends' C++ log lines out of the `normkit` command's output.

TensorFlow (2.16 and later) writes lines such as

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1700000000.000000   1234 port.cc:153] oneDNN custom operations are on. ...

straight to file descriptor 2 while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says, and Keras imports it
even under the JAX and torch backends when it is installed (`keras.utils.set_random_seed` does). They say nothing
to a user of the command. `filtered_backend_logs` routes descriptor 2 through a pipe and drops the lines in that
log format whose severity is below TF_CPP_MIN_LOG_LEVEL (default 3 here: info, warning and error lines are
dropped, fatal ones kept; `TF_CPP_MIN_LOG_LEVEL=0` shows them all). Everything else, Python's own warnings and
tracebacks included, is passed on unchanged and without waiting for a line's end, so progress displays that
rewrite a line still work.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

# A glog/absl line: severity letter, MMDD, time (seconds since the epoch before absl is initialized), thread id,
# file:line], e.g. "I0000 00:00:1700000000.000000   1234 port.cc:153] "
_LOG_LINE = re.compile(rb"[IWEF]\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {ord("I"): 0, ord("W"): 1, ord("E"): 2, ord("F"): 3}
_LONGEST_PREFIX = 96  # a line that has not matched by then is not a log line


def _severity(line: bytes) -> int | None:
    """The log severity of a complete line in the backends' format, None for any other line."""
    if line.startswith(_ABSL_PREAMBLE):
        return 1
    if _LOG_LINE.match(line):
        return _SEVERITY[line[0]]
    return None


def _may_be_log_line(start: bytes) -> bool:
    """Whether the beginning of a line, not ended yet, is or may still become a log line."""
    if _ABSL_PREAMBLE.startswith(start) or start.startswith(_ABSL_PREAMBLE) or _LOG_LINE.match(start):
        return True
    # "I0000 00:00:17..." up to the "] " that ends the prefix: a letter, then digits, spaces, colons, dots, a file
    return len(start) <= _LONGEST_PREFIX and re.fullmatch(rb"[IWEF](\d[^\]\n]*)?", start) is not None


def _min_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    except ValueError:
        return 3


class _Filter:
    """Copies what is written to the pipe to `out`, leaving out whole log lines below `min_level`."""

    def __init__(self, read_fd: int, out_fd: int, min_level: int) -> None:
        self.read_fd, self.out_fd, self.min_level = read_fd, out_fd, min_level
        self.pending = b""  # the start of a line that may still be a log line

    def run(self) -> None:
        try:
            while chunk := os.read(self.read_fd, 65536):
                self._feed(chunk)
            self._write(self.pending)
        except OSError:  # the descriptors were closed under it (a writer outlived the command): stop
            pass

    def _feed(self, chunk: bytes) -> None:
        data, self.pending = self.pending + chunk, b""
        out = bytearray()
        while data:
            newline = data.find(b"\n")
            line = data if newline < 0 else data[: newline + 1]
            data = b"" if newline < 0 else data[newline + 1 :]
            if newline < 0:  # an unfinished line: hold it only while it may be a log line
                if _may_be_log_line(line):
                    self.pending = line
                else:
                    out += line
                break
            severity = _severity(line)
            if severity is None or severity >= self.min_level:
                out += line
        self._write(bytes(out))

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.out_fd, data) :]


@contextlib.contextmanager
def filtered_backend_logs() -> Iterator[None]:
    """Within the block, the backends' log lines below TF_CPP_MIN_LOG_LEVEL never reach standard error."""
    try:
        original = os.dup(2)
    except OSError:  # no standard error to filter
        yield
        return
    read_fd, write_fd = os.pipe()
    worker = threading.Thread(target=_Filter(read_fd, original, _min_level()).run, daemon=True)
    worker.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the worker reads to the end and stops
        worker.join(timeout=5)
        os.close(read_fd)
        os.close(original)
