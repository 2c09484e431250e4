"""The one error every legacy-file problem raises: what is wrong, with which file or layer, and what to do."""

from __future__ import annotations


class LegacyFileError(ValueError):
    """A legacy model or weights file that cannot be loaded (bad file, unknown layer, weights that do not fit).

    A subclass of ValueError, so that code catching ValueError around `load_model` keeps working.
    """
