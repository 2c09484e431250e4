"""normkit's version: the one place it is written (pyproject.toml reads it; `normkit --version` prints it)."""

__version__ = "0.2.0"
