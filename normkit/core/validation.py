"""Argument checks shared by the functional ops and the layers.

Every check raises early with a message that names the argument and the value it got, so that a bad
argument never turns into a shape error deep inside a backend.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

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


# --------------------------------------------------------------------------------------------- inputs


def dtype_name(value: Any) -> str:
    """The standardized dtype name of a tensor, array or Keras variable ("float32", "int32", "complex64")."""
    from keras import backend

    return backend.standardize_dtype(value.dtype)


def check_floating(name: str, value: Any) -> None:
    """The functional ops normalize floating-point data only: an integer, bool or complex `x` is a TypeError
    (a normalized integer would be rounded back to integers, a complex one has no ordering-free variance)."""
    if value is None:
        return
    dtype = dtype_name(value)
    if not dtype.startswith(("float", "bfloat")):
        raise TypeError(
            f"`{name}` must be a floating-point tensor (float16, bfloat16, float32 or float64); cast it first, "
            f"e.g. keras.ops.cast({name}, 'float32'). Received: {name} of dtype {dtype}"
        )


def layer_input(inputs: Any, compute_dtype: str, layer_name: str) -> Any:
    """A layer's input in its compute dtype, as Keras' own normalization layers take it; checked first.

    Integer and bool inputs are cast to the compute dtype (Keras' LayerNormalization casts every input with
    `ops.cast(inputs, self.compute_dtype)`; its `__call__` autocasts only floats); complex inputs, and
    anything else that is not a number, are a TypeError. A static non-batch dim of size 0 is a ValueError.
    """
    from keras import ops

    dtype = dtype_name(inputs)
    if dtype.startswith("complex") or not (dtype.startswith(("float", "bfloat", "int", "uint")) or dtype == "bool"):
        raise TypeError(
            f"Layer '{layer_name}' normalizes real numbers; complex and non-numeric inputs are not supported. "
            f"Received: inputs of dtype {dtype}"
        )
    # A dim unknown at build (a functional model's None) can be 0 in a call: statistics over no values.
    check_no_empty_dims(inputs.shape, f"Layer '{layer_name}'")
    return inputs if dtype == compute_dtype else ops.cast(inputs, compute_dtype)


def check_no_empty_dims(input_shape: Sequence[int | None], name: str) -> None:
    """A non-batch dim of size 0 leaves the statistics without data (or a layer without channels).

    The batch axis may be empty (nothing to normalize, nothing to update); any other dim of size 0 is a
    ValueError naming the input shape and the axis. Only static sizes can be checked.
    """
    for axis, size in enumerate(tuple(input_shape)[1:], start=1):
        if size is not None and int(size) == 0:
            raise ValueError(
                f"{name} cannot normalize an input with an empty non-batch dimension: axis {axis} has size 0 "
                f"(statistics over no values are undefined). Received an input of shape {tuple(input_shape)}"
            )


def check_mask_shape(mask: Any, x_shape: Sequence[int | None], name: str = "mask") -> None:
    """`mask` must broadcast against x (NumPy rules: trailing dims aligned, each static dim equal or 1)."""
    if mask is None:
        return
    mask_shape = tuple(mask.shape)
    x_shape = tuple(x_shape)
    aligned = x_shape[len(x_shape) - len(mask_shape):]
    compatible = len(mask_shape) <= len(x_shape) and all(
        m is None or d is None or int(m) in (1, int(d)) for m, d in zip(mask_shape, aligned, strict=True)
    )
    if not compatible:
        raise ValueError(
            f"`{name}` must broadcast against the input (each dim equal to the input's or 1). Expected a shape "
            f"broadcastable to {x_shape}. Received: {name} of shape {mask_shape}"
        )


def check_param_shape(name: str, value: Any, expected: Sequence[int], axes: Sequence[int]) -> None:
    """gamma/beta/mean/variance: the shape of the dims on `axes` (size-1 dims anywhere are allowed, so that
    tf.keras 2's broadcast-shaped parameters, e.g. (1, 1, C), fit too)."""
    if value is None:
        return
    shape = tuple(value.shape)
    expected = tuple(int(d) for d in expected)
    if any(d is None for d in shape) or tuple(int(d) for d in shape if d != 1) != tuple(
        d for d in expected if d != 1
    ):
        raise ValueError(
            f"`{name}` must have shape {expected} (the input's dims on axes {tuple(axes)}). "
            f"Received: {name} of shape {shape}"
        )


def check_reduction_axes(axes: Any, rank: int, name: str = "axes") -> tuple[int, ...]:
    """`axes` of a statistic: ints (negative allowed) in range for `rank`, no duplicates; returns them sorted
    and non-negative."""
    raw = [axes] if isinstance(axes, numbers.Integral) and not isinstance(axes, bool) else axes
    if not isinstance(raw, (list, tuple)) or any(
        isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in raw
    ):
        raise TypeError(f"`{name}` must be an int or a list/tuple of ints. Received: {name}={axes!r}")
    resolved = []
    for a in raw:
        if not -rank <= a < rank:
            raise ValueError(
                f"`{name}` is out of range for an input of rank {rank}: valid axes are {-rank}..{rank - 1}. "
                f"Received: {name}={axes!r}"
            )
        resolved.append(int(a) % rank)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"`{name}` names the same axis twice for an input of rank {rank}. Received: {name}={axes!r}")
    return tuple(sorted(resolved))


# ------------------------------------------------------------------------------------ batch renormalization


def check_adjustment_result(result: Any, input_shape: Sequence[int | None]) -> tuple[Any, Any]:
    """BatchNormalization's `adjustment(shape)` must return `(scale, bias)`, both broadcastable to the input.

    Returns them as tensors. A static dim of either that is neither 1 nor the input's is a ValueError, as is
    a rank above the input's.
    """
    from keras import ops

    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError(
            "`adjustment` must return a pair (scale, bias) of tensors broadcastable to the input. "
            f"Received: adjustment returned {_describe(result)}"
        )
    input_shape = tuple(input_shape)
    tensors = []
    for part, value in zip(("scale", "bias"), result, strict=True):
        try:
            tensor = ops.convert_to_tensor(value)
        except Exception as error:  # noqa: BLE001 - any conversion failure is a bad return value
            raise TypeError(
                f"`adjustment` must return tensors; its {part} could not be converted ({error}). "
                f"Received: adjustment returned {_describe(result)}"
            ) from None
        shape = tuple(tensor.shape)
        aligned = input_shape[len(input_shape) - len(shape):] if len(shape) <= len(input_shape) else None
        if aligned is None or any(
            s is not None and d is not None and int(s) not in (1, int(d)) for s, d in zip(shape, aligned, strict=True)
        ):
            raise ValueError(
                f"`adjustment` must return (scale, bias) broadcastable to the input of shape {input_shape}. "
                f"Received: its {part} has shape {shape}"
            )
        tensors.append(tensor)
    return tensors[0], tensors[1]


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"a {type(value).__name__} of shape {tuple(shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"{value!r} (of type {type(value).__name__})"
