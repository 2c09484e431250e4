"""The one exception the CLI turns into a single error line and an exit code (no traceback)."""

from __future__ import annotations

USAGE = 2  # a bad argument: what argparse itself exits with
FAILURE = 1  # the arguments were fine but something could not be done (data, files)
INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class CLIError(Exception):
    """An error the user can fix; `main` prints `normkit <command>: error: <message>` and exits with `code`."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code


def usage_error(message: str) -> CLIError:
    return CLIError(message, USAGE)
