"""Keras masks as the core takes them: a weight per input position, broadcastable against the input."""

from __future__ import annotations

from typing import Any

from keras import ops

from normkit.core.validation import check_mask_shape

Tensor = Any


def full_rank_mask(mask: Tensor | None, inputs: Tensor) -> Tensor | None:
    """A mask of the input's rank (broadcastable against it), or None.

    A mask of rank `rank - 1` is a Keras sequence mask (from `Masking` or `Embedding(mask_zero=True)`): it
    covers every axis but the last (the features), so that axis is added. A mask of the input's rank is taken
    as it is (NumPy broadcasting, as tf-keras' GroupNormalization did). Any other rank is an error.
    """
    if mask is None:
        return None
    mask = ops.convert_to_tensor(mask)
    rank = len(inputs.shape)
    if len(mask.shape) == rank - 1:
        mask = ops.expand_dims(mask, -1)
    if len(mask.shape) == rank:
        check_mask_shape(mask, inputs.shape)
        return mask
    raise ValueError(
        f"The mask must have the input's rank ({rank}) or one less ({rank - 1}). Received: a mask of shape "
        f"{tuple(mask.shape)} for an input of shape {tuple(inputs.shape)}"
    )
