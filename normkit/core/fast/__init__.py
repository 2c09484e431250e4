"""Per-backend fast paths behind the one core.

A fast path is registered for (backend name, core function name). It receives the same arguments as the
core function and returns either the result or `NotImplemented` when it cannot match the core's semantics
for this call (a layout, dtype or reduction it does not handle), in which case the portable `keras.ops` path
runs. Fast paths must give the same numbers as the portable path within float32 rounding: the test suite
runs on both (`NORMKIT_DISABLE_FAST_PATHS=1` turns them off).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import keras

_REGISTRY: dict[tuple[str, str], Callable[..., Any]] = {}
_LOADED: set[str] = set()


def register(backend: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[(backend, name)] = fn
        return fn

    return decorate


def enabled() -> bool:
    return os.environ.get("NORMKIT_DISABLE_FAST_PATHS", "") in ("", "0")


def _load(backend: str) -> None:
    if backend in _LOADED:
        return
    _LOADED.add(backend)
    try:
        importlib.import_module(f"normkit.core.fast.{backend}_backend")
    except ModuleNotFoundError as error:
        if error.name != f"normkit.core.fast.{backend}_backend":
            raise


def lookup(name: str) -> Callable[..., Any] | None:
    backend = keras.backend.backend()
    _load(backend)
    return _REGISTRY.get((backend, name))


def load_active_backend() -> None:
    """Imports the active backend's fast paths. `import normkit` calls it, so that the first import does not
    happen inside a traced function (tf.function's autograph would convert the import machinery and warn)."""
    _load(keras.backend.backend())


def dispatch(name: str, *args: Any, **kwargs: Any) -> Any:
    """Runs the backend's fast path for `name`, or returns NotImplemented when there is none."""
    if not enabled():
        return NotImplemented
    fn = lookup(name)
    if fn is None:
        return NotImplemented
    return fn(*args, **kwargs)
