"""`normkit diagram`: Wu & He (2018) Figure 2, computed from the layers' own reduction axes.

Each panel is the N x C x (H,W) cube of a 4-D input; the cubes shaded blue share one mean and variance (for
RMS and filter response normalization, which subtract no mean: one mean of squares).
Which elements share statistics is not drawn from a picture but derived from the built layer's `_reduction`
(normkit.core.normalize.Reduction): two elements share a mean iff they agree on every axis that is not
reduced, and (for grouped channels) lie in the same channel group.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from normkit.cli.errors import CLIError, usage_error
from normkit.cli.options import parse_int

DEFAULT_SHAPE = (4, 2, 2, 10)  # N, H, W, C: the seed's 10 conv channels, so its groups=5 fits
BLUE = "#3b7dd8"


@dataclass
class Panel:
    title: str
    caption: str
    cube: np.ndarray  # bool (N, C, H*W): True where the element shares the highlighted mean and variance


def statistics_ids(reduction: Any, shape: tuple[int, ...]) -> np.ndarray:
    """For every element of an input of `shape`, an id of the mean/variance it is normalized with."""
    index = np.indices(shape)
    key_axes = [a for a in range(len(shape)) if a not in reduction.reduction_axes and a != reduction.group_axis]
    keys = [index[a] for a in key_axes]
    if reduction.group_axis is not None:
        per_group = shape[reduction.group_axis] // reduction.groups
        keys.append(index[reduction.group_axis] // per_group)
    if not keys:
        return np.zeros(shape, dtype=np.int64)
    flat = np.ravel_multi_index(keys, [int(k.max()) + 1 for k in keys])
    return flat.astype(np.int64)


def build_layer(kind: str, groups: int, axis: Any, shape: tuple[int, ...]) -> tuple[Any, str]:
    """Builds the layer on `shape` (which validates the configuration, as at training time)."""
    import normkit

    if kind == "batch":
        layer, call = normkit.BatchNormalization(axis=axis), f"BatchNormalization(axis={axis})"
    elif kind == "layer":
        layer, call = normkit.LayerNormalization(axis=axis), f"LayerNormalization(axis={axis})"
    elif kind == "instance":
        layer, call = normkit.InstanceNormalization(axis=axis), f"InstanceNormalization(axis={axis})"
    elif kind == "rms":
        layer, call = normkit.RMSNormalization(axis=axis), f"RMSNormalization(axis={axis})"
    elif kind == "frn":
        # Always over H and W of an NHWC input (Addons' axis=[1, 2]).
        layer, call = normkit.FilterResponseNormalization(), "FilterResponseNormalization()"
    else:
        layer, call = (
            normkit.GroupNormalization(groups=groups, axis=axis),
            f"GroupNormalization(groups={groups}, axis={axis})",
        )
    layer.build(shape)
    return layer, call


def panel_for(kind: str, groups: int, axis: Any, shape: tuple[int, ...], title: str | None = None) -> Panel:
    try:
        layer, call = build_layer(kind, groups, axis, shape)
    except (ValueError, TypeError) as error:
        raise usage_error(f"{kind} normalization with input shape {shape}: {error}") from None
    reduction = layer._reduction
    ids = statistics_ids(reduction, shape)
    channel_axis = _channel_axis(axis, len(shape))
    spatial = [a for a in range(1, len(shape)) if a != channel_axis]
    # cube axes: N, C, then the spatial axes flattened (H,W), as in the paper's figure
    ordered = np.transpose(ids, (0, channel_axis, *spatial)).reshape(shape[0], shape[channel_axis], -1)
    highlighted = ordered == ordered[0, 0, -1]  # the statistics of the front-top corner element
    count = int(highlighted.sum())
    total = len(np.unique(ids))
    caption = (
        f"reduced over axes {reduction.reduction_axes}"
        + (f" with {reduction.groups} channel groups" if reduction.group_axis is not None else "")
        + f"\n{total} means, each over {count} elements"
    )
    return Panel(title or call, caption, highlighted)


def _channel_axis(axis: Any, rank: int) -> int:
    """The cube's C axis: the layer's (last) axis for channels, normalized to a non-negative index."""
    first = axis[-1] if isinstance(axis, (list, tuple)) else axis
    if isinstance(axis, (list, tuple)) and len(axis) > 1:
        first = -1 if rank - 1 in [a % rank for a in axis] else axis[0]
    return first % rank


def draw(panels: list[Panel], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(max(5.0, 3.6 * len(panels)), 4.6), dpi=110)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d")
        n, c, hw = panel.cube.shape
        # x = N (left to right), y = C (front to back), z = H,W (bottom to top)
        filled = np.ones((n, c, hw), dtype=bool)
        blue, white = np.array(matplotlib.colors.to_rgba(BLUE)), np.array((0.97, 0.97, 0.97, 1.0))
        colors = np.where(panel.cube[..., None], blue, white)
        ax.voxels(filled, facecolors=colors, edgecolors=(0.3, 0.3, 0.3, 0.6), linewidth=0.4)
        ax.set_box_aspect((n, c, hw))
        ax.view_init(elev=22, azim=-58)
        ax.set_xlabel("N")
        ax.set_ylabel("C")
        ax.set_zlabel("H, W")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
        ax.set_title(panel.title, fontsize=9)
        ax.text2D(0.5, -0.02, panel.caption, transform=ax.transAxes, ha="center", va="top", fontsize=7.5)
    fig.suptitle("Elements in blue share one mean and variance", fontsize=11)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as error:
        raise CLIError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        plt.close(fig)
    return path


def _parse_axis(text: str | None) -> Any:
    if text is None:
        return -1
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise usage_error(f"--axis must be an int or comma-separated ints, got {text!r}") from None
    if not values:
        raise usage_error(f"--axis must be an int or comma-separated ints, got {text!r}")
    return values[0] if len(values) == 1 else values


def _parse_shape(text: str | None) -> tuple[int, ...]:
    if text is None:
        return DEFAULT_SHAPE
    values = tuple(parse_int("--shape", t) for t in text.split(","))
    if len(values) != 4:
        raise usage_error(f"--shape must be four sizes (N,H,W,C or N,C,H,W), got {text!r}")
    return values


def run_diagram(args: argparse.Namespace) -> int:
    axis = _parse_axis(args.axis)
    groups = parse_int("--groups", args.groups, minimum=-1) if args.groups is not None else 5
    if args.layer != "group" and args.groups is not None:
        raise usage_error("--groups applies to --layer group only")
    if args.layer == "frn" and args.axis is not None:
        raise usage_error("--axis does not apply to --layer frn: it always normalizes over H and W (axis [1, 2])")
    if args.layer in ("instance", "group") and isinstance(axis, list):
        raise usage_error(f"--axis for {args.layer} normalization is one int, got {args.axis!r}")
    shape = _parse_shape(args.shape)
    if args.shape is None and args.layer == "group" and groups > 0 and shape[3] % groups:
        shape = (*shape[:3], groups * max(1, round(shape[3] / groups)))  # C that --groups divides
    if args.shape is None and _channel_axis(axis, 4) == 1:
        shape = (shape[0], shape[3], shape[1], shape[2])  # channels first
    directory = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(directory):
        raise CLIError(f"cannot write {args.out}: no such directory {directory}")
    if args.layer is not None:
        panels = [panel_for(args.layer, groups, axis, shape)]
    else:
        panels = [
            panel_for("batch", 0, -1, shape, "Batch Norm\nBatchNormalization(axis=-1)"),
            panel_for("layer", 0, [1, 2, 3], shape, "Layer Norm\nLayerNormalization(axis=[1, 2, 3])"),
            panel_for("instance", 0, -1, shape, "Instance Norm\nInstanceNormalization(axis=-1)"),
            panel_for("group", 5, -1, shape, "Group Norm\nGroupNormalization(groups=5, axis=-1)"),
            panel_for("layer", 0, 3, shape, "the seed's Layer Norm\nLayerNormalization(axis=3)"),
            panel_for("rms", 0, 3, shape, "RMS Norm (no mean)\nRMSNormalization(axis=3)"),
            panel_for("frn", 0, -1, shape, "Filter Response Norm (no mean)\nFilterResponseNormalization()"),
        ]
    path = draw(panels, args.out)
    print(f"diagram: {path}")
    return 0
