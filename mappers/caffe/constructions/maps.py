"""Constant linear maps per axis (resize, adaptive average, unpooling), gathers by Slices, exact zero
pads and constant maps (pad-resize)."""
from __future__ import annotations

import numpy as np

from tracecap.mappers.caffe.registry import Unsupported
from tracecap.mappers.caffe.constructions.basics import (
    conv_spatial, crop, group_dilation, power_layer, prod, reshape_layer, silence_unused,
)


# =====================================================================================
# Section: padding, resize, adaptive pooling, unpooling (pad-resize)
# =====================================================================================
# OpenCV fuses a Scale that follows a Convolution/Deconvolution/BatchNorm (or a Power after one)
# into its weights and aborts (convolution_layer.cpp assertion) when the Scale blob is not one value
# per channel; Caffe runs it. ``constant_map`` therefore puts a same-shape Reshape between them.

_JOINT_LIMIT = 1 << 16  # weights of one InnerProduct that maps the last two axes together


def linear_map(ctx, bottom, shape, maps, top):
    """``bottom`` with a constant matrix applied along each axis in ``maps``; the last layer writes ``top``.

    ``maps`` is {axis: matrix [out, in]} or {axis: (matrix, bias)}; a bias (one value per output index of
    that axis) is added right after that axis's matrix, axes going from the last to the first. A separable
    resize (bilinear, bicubic, nearest by any factor, adaptive average pooling) is exactly such a product:
    the same weights times the same inputs, summed, as torch does; a 0/1 matrix is a gather, exact for
    finite inputs (x*1 + 0*y). The last axis is an InnerProduct with ``axis``; any other axis becomes the
    channel axis of a 4-D view (Reshape) for a 1x1 Convolution, and the shape is restored after it. When
    the last two axes map and their joint matrix is small, one InnerProduct over both (a Kronecker
    product, biases combined) and a Reshape do it in two layers instead of four.
    """
    shape = tuple(int(d) for d in shape)
    norm = {}
    for axis, spec in maps.items():
        matrix, bias = spec if isinstance(spec, tuple) else (spec, None)
        matrix = np.asarray(matrix, np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != shape[axis]:
            raise Unsupported(f"internal: a {matrix.shape} matrix cannot map axis {axis} of {shape}")
        if bias is None and matrix.shape[0] == matrix.shape[1] and np.array_equal(matrix, np.eye(len(matrix))):
            continue  # identity
        norm[axis] = (matrix, None if bias is None else np.asarray(bias, np.float64).reshape(-1))
    if not norm:
        raise Unsupported("internal: empty linear map")
    ndim = len(shape)
    axes = sorted(norm, reverse=True)
    if axes == [ndim - 1, ndim - 2] and norm[axes[0]][0].size * norm[axes[1]][0].size <= _JOINT_LIMIT:
        (rows, row_bias), (cols, col_bias) = norm[ndim - 2], norm[ndim - 1]
        joint = np.kron(rows, cols)  # [(i, j), (h, w)]: C order on both sides
        bias = np.zeros((rows.shape[0], cols.shape[0]))
        if col_bias is not None:  # added before the rows map, so it goes through it
            bias += rows.sum(axis=1)[:, None] * col_bias[None, :]
        if row_bias is not None:
            bias += row_bias[:, None]
        with_bias = row_bias is not None or col_bias is not None
        flat = ctx.tmp("joint")
        return [ctx.layer("InnerProduct", [bottom], [flat], blobs=[joint] + ([bias.reshape(-1)] if with_bias else []),
                          params={"num_output": joint.shape[0], "bias_term": with_bias, "axis": ndim - 2}),
                reshape_layer(ctx, flat, shape[:-2] + (rows.shape[0], cols.shape[0]), top=top)]
    layers, cur = [], bottom
    for n, axis in enumerate(axes):
        matrix, bias = norm[axis]
        out = top if n == len(axes) - 1 else ctx.tmp(f"axis{axis}")
        layers += _map_one_axis(ctx, cur, shape, axis, matrix, bias, out)
        cur, shape = out, shape[:axis] + (matrix.shape[0],) + shape[axis + 1:]
    return layers


def _map_one_axis(ctx, bottom, shape, axis, matrix, bias, top):
    params = {"num_output": matrix.shape[0], "bias_term": bias is not None}
    extra = [] if bias is None else [bias]
    if axis == len(shape) - 1:
        return [ctx.layer("InnerProduct", [bottom], [top], params={**params, "axis": axis}, blobs=[matrix] + extra)]
    conv = {**params, "kernel_size": [1]}
    weight = matrix.reshape(matrix.shape + (1, 1))
    if len(shape) == 4 and axis == 1:
        return [ctx.layer("Convolution", [bottom], [top], params=conv, blobs=[weight] + extra)]
    view, mapped = ctx.tmp("view"), ctx.tmp("mapped")
    return [reshape_layer(ctx, bottom, (prod(shape[:axis]), shape[axis], prod(shape[axis + 1:]), 1), top=view),
            ctx.layer("Convolution", [view], [mapped], params=conv, blobs=[weight] + extra),
            reshape_layer(ctx, mapped, shape[:axis] + (matrix.shape[0],) + shape[axis + 1:], top=top)]


def gather_slices(ctx, bottom, shape, axis, index, top):
    """``bottom.index_select(axis, index)`` for a constant index list, by Slice + Concat: copies only,
    exact for every value (inf and NaN included). Runs of consecutive indices are taken whole; a blob
    may appear several times among the Concat's bottoms (both runtimes read that)."""
    size = shape[axis]
    runs = []
    for i in index:
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    if len(runs) == 1:
        return crop(ctx, bottom, shape, [(axis, runs[0][0], runs[0][1])], top)
    bounds = sorted({0, size} | {p for run in runs for p in run})
    layers, pieces = [], [bottom]
    if len(bounds) > 2:
        pieces = [ctx.tmp("piece") for _ in bounds[1:]]
        layers.append(ctx.layer("Slice", [bottom], pieces, name=ctx.tmp("slice"),
                                params={"axis": axis, "slice_point": bounds[1:-1]}))
    order = []
    for lo, hi in runs:
        k = bounds.index(lo)
        while bounds[k] < hi:
            order.append(pieces[k])
            k += 1
    layers.append(ctx.layer("Concat", order, [top], params={"axis": axis}))
    return layers + silence_unused(ctx, [p for p in pieces if p not in order])


def zero_pad(ctx, bottom, shape, pads, top):
    """Zero padding of a 4-D blob by one Convolution; ``pads`` = ((before, after) for axes 1, 2, 3), all >= 0.

    Spatially, a one-hot kernel of size 1 + |before - after| with symmetric pad max(before, after) shifts
    the input so that the border comes out asymmetric (x*1 plus 0*zeros: exact for finite inputs); without
    a channel pad it is depthwise (group = C). Channels padded with zeros make it a full convolution whose
    weight is the identity between zero rows.
    """
    (c0, c1), *spatial = [(int(a), int(b)) for a, b in pads]
    c = shape[1]
    size = [1 + abs(a - b) for a, b in spatial]
    tap = [max(a, b) - a for a, b in spatial]
    out_c = c + c0 + c1
    if c0 or c1:
        weight = np.zeros((out_c, c) + tuple(size), np.float32)
        weight[np.arange(c) + c0, np.arange(c), tap[0], tap[1]] = 1.0
        group = 1
    else:
        weight = np.zeros((c, 1) + tuple(size), np.float32)
        weight[:, 0, tap[0], tap[1]] = 1.0
        group = c
    params = {"num_output": out_c, "bias_term": False,
              **conv_spatial({"kernel": tuple(size), "stride": (1, 1), "pad": tuple(max(a, b) for a, b in spatial)}),
              **group_dilation(group, (1, 1))}
    return [ctx.layer("Convolution", [bottom], [top], params=params, blobs=[weight])]


def constant_map(ctx, bottom, shape, scale=None, shift=None, top=None, guard=True):
    """y = x * scale + shift with constant maps over ``shape[1:]`` (None: 1 or 0): one Scale layer whose
    blobs span only the axes the maps vary along (a Power when they vary along none). ``guard`` puts a
    same-shape Reshape in front, for when the previous layer may be one OpenCV fuses a Scale into (see the
    comment heading this section)."""
    top = top or ctx.top
    full = tuple(shape[1:])
    maps = [np.broadcast_to(np.asarray(m, np.float64), full) for m in (scale, shift) if m is not None]
    varying = [k for k in range(len(full)) if any(np.ptp(m, axis=k).any() for m in maps)]
    if not varying:
        return [power_layer(ctx, bottom, scale=1.0 if scale is None else float(np.ravel(scale)[0]),
                            shift=0.0 if shift is None else float(np.ravel(shift)[0]), top=top)]
    lo, hi = varying[0], varying[-1] + 1
    index = tuple(slice(None) if lo <= k < hi else slice(0, 1) for k in range(len(full)))
    blobs = [np.broadcast_to(np.asarray(1.0 if scale is None else scale, np.float64), full)[index].reshape(full[lo:hi])]
    if shift is not None:
        blobs.append(np.broadcast_to(np.asarray(shift, np.float64), full)[index].reshape(full[lo:hi]))
    layers = []
    if guard:
        guarded = ctx.tmp("unfused")
        layers.append(reshape_layer(ctx, bottom, shape, top=guarded))
        bottom = guarded
    params = {"axis": lo + 1, "num_axes": hi - lo, "bias_term": shift is not None}
    return layers + [ctx.layer("Scale", [bottom], [top], params=params, blobs=blobs)]
