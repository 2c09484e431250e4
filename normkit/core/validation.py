"""Argument checks shared by the functional ops and the layers.

Every check raises early with a message that names the argument and the value it got, so that a bad
argument never turns into a shape error deep inside a backend.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

AxisArg = int | Sequence[int]


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r} (of type {type(value).__name__})")
    return value


def check_epsilon(epsilon: object, name: str = "epsilon") -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"`{name}` must be a non-negative float. Received: {name}={epsilon!r}")
    if not math.isfinite(float(epsilon)) or epsilon < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0. Received: {name}={epsilon!r}")
    return float(epsilon)


def check_fraction(name: str, value: object) -> float:
    """A float in [0, 1], such as a moving-average momentum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float in [0, 1]. Received: {name}={value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value!r}")
    return float(value)


def check_axis_arg(axis: object, *, allow_list: bool) -> int | tuple[int, ...]:
    """Type-checks `axis` at construction time (no rank known yet).

    Returns an int, or a tuple of ints when a list/tuple was given.
    """
    def is_int(a: object) -> bool:
        return isinstance(a, numbers.Integral) and not isinstance(a, bool)

    if is_int(axis):
        return int(axis)  # type: ignore[arg-type]
    if allow_list and isinstance(axis, (list, tuple)):
        if len(axis) == 0:
            raise ValueError(f"`axis` must name at least one axis. Received: axis={axis!r}")
        for a in axis:
            if not is_int(a):
                raise TypeError(f"`axis` must be an int or a list of ints. Received: axis={axis!r}")
        ints = tuple(int(a) for a in axis)
        if len(set(ints)) != len(ints):
            raise ValueError(f"`axis` has duplicate entries. Received: axis={axis!r}")
        return ints
    expected = "an int or a list/tuple of ints" if allow_list else "an int"
    raise TypeError(f"`axis` must be {expected}. Received: axis={axis!r} (of type {type(axis).__name__})")


def canonical_axes(axis: AxisArg, rank: int, *, allow_batch_axis: bool = True) -> tuple[int, ...]:
    """Resolves `axis` (int or sequence, negative allowed) against `rank` to sorted, non-negative axes."""
    raw = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    resolved = []
    for a in raw:
        if not -rank <= a < rank:
            raise ValueError(
                f"`axis` is out of range for an input of rank {rank}: valid axes are {-rank}..{rank - 1}. "
                f"Received: axis={axis!r}"
            )
        resolved.append(a % rank)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"`axis` names the same axis twice for an input of rank {rank}. Received: axis={axis!r}")
    if not allow_batch_axis and 0 in resolved:
        raise ValueError(
            f"`axis` must not be the batch axis (0); statistics are computed per sample. Received: axis={axis!r}"
        )
    return tuple(sorted(resolved))


def check_groups_arg(groups: object) -> int:
    """Constructor-time check of `groups`: a positive int, or -1 meaning one group per channel."""
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"`groups` must be an int (a positive number of groups, or -1). Received: groups={groups!r}")
    if groups == 0 or groups < -1:
        raise ValueError(
            f"`groups` must be a positive int, or -1 for one group per channel. Received: groups={groups!r}"
        )
    return int(groups)


def resolve_groups(groups: int, channels: int | None, axis: int, input_shape: Sequence[int | None]) -> int:
    """Build-time check of `groups` against the number of channels on `axis`; returns the group count."""
    if channels is None:
        raise ValueError(
            f"Axis {axis} of the input must have a defined dimension (the channels to split into groups), "
            f"but the layer received an input of shape {tuple(input_shape)}. Received: axis={axis}"
        )
    if groups == -1:
        return channels
    if groups > channels:
        raise ValueError(
            f"`groups` cannot be more than the number of channels on axis {axis} ({channels}). "
            f"Received: groups={groups}"
        )
    if channels % groups != 0:
        raise ValueError(
            f"The number of channels on axis {axis} ({channels}) must be a multiple of `groups`. "
            f"Received: groups={groups}"
        )
    return groups


def check_rank(input_shape: Sequence[int | None], minimum: int, name: str) -> int:
    rank = len(input_shape)
    if rank < minimum:
        raise ValueError(
            f"{name} needs an input of rank >= {minimum} (a batch axis and at least one more). "
            f"Received an input of shape {tuple(input_shape)}"
        )
    return rank
