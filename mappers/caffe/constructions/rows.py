"""Reductions over a run of axes, spreading back, per-row normalization and affine maps (norm-reduce)."""
from __future__ import annotations

import math

import numpy as np

from tracecap.mappers.caffe.registry import Unsupported
from tracecap.mappers.caffe.constructions.basics import (
    pool_spatial, power_layer, prod, reshape_layer, round_mode, scalar_operand,
)


# ---- norm-reduce: reductions over an axis run, spreading back, per-row normalization -------------------
# A tensor reduced over a contiguous run of axes is viewed as outer × rows × inner. Pooling reduces the
# rows of an (outer, 1, rows, inner) view (MAX and AVE are exact: the window is the whole run, no padding);
# a ones 1×1 Convolution sums the rows of an (outer, rows, inner, 1) view. Both leave the outer × inner
# values in the same memory order, so the result needs only a Reshape to any shape of that size.

def as_view(ctx, bottom, shape, view, what="view"):
    """``bottom`` (of ``shape``) seen as ``view``: itself when the shapes agree, else a Reshape."""
    if 0 in tuple(view):
        raise Unsupported(f"an empty tensor {tuple(view)}: Caffe blobs have no zero-size axes")
    if tuple(shape) == tuple(view):
        return [], bottom
    top = ctx.tmp(what)
    return [reshape_layer(ctx, bottom, view, top=top)], top


def split_at_run(shape, start, stop):
    """(outer, rows, inner) of ``shape`` around the axis run [start, stop)."""
    if 0 in tuple(shape):
        raise Unsupported(f"an empty tensor {tuple(shape)}: Caffe blobs have no zero-size axes")
    return prod(shape[:start]), prod(shape[start:stop]), prod(shape[stop:])


def pool_rows(ctx, bottom, shape, start, stop, method, top, actual=None):
    """MAX or AVE over the axes [start, stop) of ``bottom``: one Pooling layer writing ``top``.

    ``shape`` is the logical shape, ``actual`` the Caffe blob's (default: the same). A 4-D blob reduced
    over H and/or W pools as it is; anything else is viewed as (outer, 1, rows, inner).
    Returns (layers, shape of ``top``).
    """
    actual = tuple(shape) if actual is None else tuple(actual)
    if len(shape) == 4 and start >= 2 and actual == tuple(shape):
        view = tuple(shape)
        kernel = (shape[2] if start == 2 else 1, shape[3] if stop == 4 else 1)
    else:
        outer, rows, inner = split_at_run(shape, start, stop)
        view, kernel = (outer, 1, rows, inner), (rows, 1)
    layers, x = as_view(ctx, bottom, actual, view)
    if kernel == tuple(view[2:]):
        params = {"pool": method, "global_pooling": True}
    else:
        params = {"pool": method, **pool_spatial(kernel, (1, 1), (0, 0)), **round_mode(ctx, False)}
    out = view[:2] + (view[2] // kernel[0], view[3] // kernel[1])
    return layers + [ctx.layer("Pooling", [x], [top], name=top, params=params)], out


def sum_rows(ctx, bottom, shape, start, stop, top, actual=None):
    """The sum over the axes [start, stop): a 1×1 Convolution with weights 1 on an (outer, rows, inner, 1)
    view (a 4-D blob summed over its channels is convolved as it is). Returns (layers, shape of ``top``)."""
    actual = tuple(shape) if actual is None else tuple(actual)
    outer, rows, inner = split_at_run(shape, start, stop)
    direct = len(shape) == 4 and (start, stop) == (1, 2) and actual == tuple(shape)
    view = tuple(shape) if direct else (outer, rows, inner, 1)
    layers, x = as_view(ctx, bottom, actual, view)
    params = {"num_output": 1, "bias_term": False, "kernel_size": [1]}
    layers.append(ctx.layer("Convolution", [x], [top], name=top, params=params,
                            blobs=[np.ones((1, rows, 1, 1), np.float32)]))
    return layers, (view[0], 1) + view[2:]


def spread_rows(ctx, bottom, shape, outer, rows, inner, top):
    """``bottom`` (``shape``, outer·inner values) repeated ``rows`` times on a new second axis: a 1×1
    Convolution from one channel to ``rows`` channels with weights 1 (each output is one product by 1).
    A 4-D (outer, 1, h, w) blob spreads as it is, to (outer, rows, h, w); anything else is viewed as
    (outer, 1, inner, 1) and spreads to (outer, rows, inner, 1). Returns (layers, shape of ``top``)."""
    shape = tuple(shape)
    view = shape if len(shape) == 4 and shape[:2] == (outer, 1) else (outer, 1, inner, 1)
    layers, x = as_view(ctx, bottom, shape, view, "as_column")
    params = {"num_output": rows, "bias_term": False, "kernel_size": [1]}
    layers.append(ctx.layer("Convolution", [x], [top], name=top, params=params,
                            blobs=[np.ones((rows, 1, 1, 1), np.float32)]))
    return layers, (outer, rows) + view[2:]


def scale_rows(ctx, bottom, view, factors, top):
    """``bottom`` (an (A, B, K, 1) view) times ``factors`` (A·B values, one per row): a two-bottom Scale."""
    a, b = view[0], view[1]
    reshaped = ctx.tmp("per_row")
    return [reshape_layer(ctx, factors, (a, b), top=reshaped),
            ctx.layer("Scale", [bottom, reshaped], [top], name=top, params={"axis": 0, "num_axes": 2})]


def normalize_rows(ctx, bottom, view, eps, top):
    """(x - mean) / sqrt(var + eps) of each (a, b) row of an (A, B, K, 1) view (or (A, B, H, W), K = H×W),
    var biased (as PyTorch).

    Not MVN with its variance: Caffe computes x / (sqrt(var) + eps), OpenCV x / sqrt(var + eps) (measured).
    MVN without variance (centring, exact in both), then Power 2, AVE pooling over K, Power(var + eps, -1/2)
    and a two-bottom Scale: 6 layers.
    """
    centred, squared, var, inv = ctx.tmp("centred"), ctx.tmp("squared"), ctx.tmp("var"), ctx.tmp("rstd")
    layers = [ctx.layer("MVN", [bottom], [centred], name=centred, params={"normalize_variance": False}),
              power_layer(ctx, centred, power=2.0, top=squared)]
    layers += pool_rows(ctx, squared, view, 2, 4, "AVE", var)[0]
    layers.append(power_layer(ctx, var, power=-0.5, shift=float(eps), top=inv))
    return layers + scale_rows(ctx, centred, view, inv, top)


def affine(ctx, bottom, axis, weight, bias, shape, top):
    """x * weight + bias with weight/bias (constants, either may be None) over the axes from ``axis``:
    a Scale layer (bias_term when there is a bias); ``shape`` is the weight's shape."""
    def as_shape(v):
        a = ctx.array(v)
        if a.size != prod(shape):
            raise Unsupported(f"affine parameter of {a.size} values for shape {tuple(shape)}")
        return a.reshape(shape)
    w = as_shape(weight) if weight is not None else np.ones(shape, np.float32)
    blobs = [w] + ([as_shape(bias)] if bias is not None else [])
    params = {"bias_term": bias is not None}
    if (axis, len(shape)) != (1, 1):  # Scale's defaults: keep the common per-channel layer lean
        params.update(axis=axis, num_axes=len(shape))
    return [ctx.layer("Scale", [bottom], [top], name=top, params=params, blobs=blobs)]


def number(v, what):
    """A Python or one-element-constant number as float, else Unsupported (a mapper never gets a TypeError)."""
    f = scalar_operand(v)
    if f is None:
        raise Unsupported(f"{what} must be a number, got {type(v).__name__}")
    return f


def integer(v, what):
    """An int argument (a float that is whole counts) as int, else Unsupported."""
    f = scalar_operand(v)
    if f is None or not math.isfinite(f) or f != int(f):
        raise Unsupported(f"{what} must be an integer, got {v!r}")
    return int(f)
