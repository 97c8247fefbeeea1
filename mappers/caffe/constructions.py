"""Layer constructions several mappers share.

Each helper returns ``netspec.Layer`` data (or one layer) for a piece of a mapping that more
than one op needs: convolution fields, a Reshape, a Power, a clamp from ReLU/ReLU6, a crop by
Slices, a broadcast by Scale or a ones-Deconvolution. Mappers compose them; none of them reads
the node except through ``ctx``.
"""
from __future__ import annotations

import math
import operator
from functools import reduce

import numpy as np

from tracecap.graph import Blob
from tracecap.mappers.caffe.registry import Unsupported


def conv_spatial(params):
    """Convolution spatial fields: repeated kernel_size/stride/pad, or the _h/_w forms."""
    out = {}
    for key, field, default in (("kernel", "kernel_size", None), ("stride", "stride", 1), ("pad", "pad", 0)):
        h, w = params[key]
        if h == w:
            if h != default or key == "kernel":
                out[field] = [h]
        else:
            out[f"{key}_h"], out[f"{key}_w"] = h, w
    return out


def group_dilation(groups, dil):
    """Convolution/Deconvolution `group` and `dilation` fields, omitted at their defaults."""
    out = {}
    if groups != 1:
        out["group"] = groups
    if dil != (1, 1):
        out["dilation"] = [dil[0]] if dil[0] == dil[1] else list(dil)
    return out


def weight_and_bias(ctx, weight, bias):
    return [weight] + ([ctx.array(bias)] if bias is not None else [])


def pool_spatial(kernel, stride, pad):
    out = {}
    for key, (h, w) in (("kernel", kernel), ("stride", stride), ("pad", pad)):
        field = "kernel_size" if key == "kernel" else key
        if h == w:
            out[field] = h
        else:
            out[f"{key}_h"], out[f"{key}_w"] = h, w
    return out


def reshape_layer(ctx, bottom, shape, top=None, name=None):
    top = top or ctx.tmp("reshape")
    return ctx.layer("Reshape", [bottom], [top], name=name or top, params={"shape": {"dim": [int(d) for d in shape]}})


def prod(xs):
    return reduce(operator.mul, xs, 1)


def scalar_operand(v):
    """A Python number or a one-element constant as float; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, Blob) and v.is_constant and v.value is not None and v.value.numel() == 1:
        return float(v.value.reshape(()).item())
    return None


def is_activation(v):
    return isinstance(v, Blob) and not v.is_constant


def clip(ctx, bottom, lo, hi, top=None):
    """clamp(x, lo, hi). [0, 6] is ReLU6 (Clip(0, 6) in bvlc), [0, inf) ReLU; other ranges are built
    from ReLU/ReLU6 between Power layers - the same layers in both dialects, which share no Clip."""
    def relu6_layer(src, top):
        if ctx.has_layer("ReLU6"):
            return ctx.layer("ReLU6", [src], [top])
        return ctx.layer("Clip", [src], [top], params={"min": 0.0, "max": 6.0})
    top = top or ctx.top
    if lo == 0.0 and hi == 6.0:
        return [relu6_layer(bottom, top)]
    if lo == 0.0 and hi == math.inf:
        return [ctx.layer("ReLU", [bottom], [top])]
    if lo > hi:
        ctx.unsupported(f"clamp with min {lo} > max {hi}")
    shifted, clipped = ctx.tmp("shift"), ctx.tmp("clip")
    if math.isinf(lo) and math.isinf(hi):
        ctx.unsupported("clamp without bounds")
    if math.isinf(hi):      # lo + relu(x - lo)
        return [power_layer(ctx, bottom, shift=-lo, top=shifted), ctx.layer("ReLU", [shifted], [clipped]),
                power_layer(ctx, clipped, shift=lo, top=top)]
    if math.isinf(lo):      # hi - relu(hi - x)
        return [power_layer(ctx, bottom, scale=-1.0, shift=hi, top=shifted), ctx.layer("ReLU", [shifted], [clipped]),
                power_layer(ctx, clipped, scale=-1.0, shift=hi, top=top)]
    k = 6.0 / (hi - lo)     # lo + relu6((x - lo) * k) / k
    return [power_layer(ctx, bottom, scale=k, shift=-lo * k, top=shifted), relu6_layer(shifted, clipped),
            power_layer(ctx, clipped, scale=1.0 / k, shift=lo, top=top)]


def round_mode(ctx, ceil):
    if ctx.dialect == "bvlc":
        return {"round_mode": "CEIL" if ceil else "FLOOR"}
    return {"ceil_mode": bool(ceil)}


def broadcast_span(big, small, keep_batch):
    """Axis range where ``small`` (aligned right to ``big``) differs from 1, if it matches ``big`` there.

    Caffe's Scale/Bias apply a blob of shape big[axis:axis+k]; broadcasting inside that span is not possible.
    """
    small = (1,) * (len(big) - len(small)) + tuple(small)
    idx = [i for i, d in enumerate(small) if d != 1]
    if not idx:
        return None
    a, b = (0 if keep_batch else idx[0]), idx[-1]
    if tuple(small[a:b + 1]) != tuple(big[a:b + 1]):
        raise Unsupported(f"broadcasting {tuple(small)} against {tuple(big)} inside the span "
                          f"{a}..{b} has no Caffe Scale/Bias equivalent")
    return a, tuple(big[a:b + 1])


def power_layer(ctx, bottom, power=1.0, scale=1.0, shift=0.0, top=None):
    params = {}
    if power != 1.0:
        params["power"] = power
    if scale != 1.0:
        params["scale"] = scale
    if shift != 0.0:
        params["shift"] = shift
    return ctx.layer("Power", [bottom], [top or ctx.top], params=params)


def broadcast_combine(ctx, kind, x, other, top=None):
    """x (activation) combined with a broadcast tensor ``other`` (kind 'mul' or 'add').

    Constants become Scale blobs (an add is Scale with ones and a bias: 1*x + b is exact).
    Activations: mul is a two-bottom Scale; add of an N×C×1×1 operand spreads it over H×W with a
    ones Deconvolution (exact) and adds with Eltwise - OpenCV has no Bias layer.
    """
    top = top or ctx.top
    big = ctx.shape(x)
    if other.is_constant:
        span = broadcast_span(big, other.shape, keep_batch=False)
        value = ctx.array(other)
        if span is None:
            return [power_layer(ctx, ctx.bottom(x), **({"scale": float(value.reshape(-1)[0])} if kind == "mul"
                                                else {"shift": float(value.reshape(-1)[0])}), top=top)]
        axis, dims = span
        params = {"axis": axis, "num_axes": len(dims), "bias_term": kind == "add"}
        blobs = [value.reshape(dims)] if kind == "mul" else [np.ones(dims, np.float32), value.reshape(dims)]
        return [ctx.layer("Scale", [ctx.bottom(x)], [top], params=params, blobs=blobs)]
    if ctx.shape(other) == big:
        op = "PROD" if kind == "mul" else "SUM"
        return [ctx.layer("Eltwise", [ctx.bottom(x), ctx.bottom(other)], [top], params={"operation": op})]
    axis, dims = broadcast_span(big, other.shape, keep_batch=True)
    if kind == "add":
        small = (1,) * (len(big) - len(other.shape)) + tuple(other.shape)
        if len(big) != 4 or small[2:] != (1, 1) or small[:2] != big[:2]:
            raise Unsupported(f"adding {tuple(other.shape)} to {big}: only N×C×1×1 operands broadcast exactly")
        n, c, h, w = big
        spread = ctx.tmp("spread")
        layers = []
        operand = ctx.bottom(other)
        if tuple(other.shape) != small:
            operand = ctx.tmp("as4d")
            layers.append(reshape_layer(ctx, ctx.bottom(other), small, top=operand))
        params = {"num_output": c, "bias_term": False, "kernel_h": h, "kernel_w": w, "group": c}
        layers.append(ctx.layer("Deconvolution", [operand], [spread], params=params,
                                blobs=[np.ones((c, 1, h, w), np.float32)]))
        layers.append(ctx.layer("Eltwise", [ctx.bottom(x), spread], [top], params={"operation": "SUM"}))
        return layers
    layers = []
    operand = ctx.bottom(other)
    if tuple(other.shape) != dims:
        operand = ctx.tmp("broadcast")
        layers.append(reshape_layer(ctx, ctx.bottom(other), dims, top=operand))
    params = {"axis": axis, "num_axes": len(dims), "bias_term": False}
    layers.append(ctx.layer("Scale", [ctx.bottom(x), operand], [top], params=params))
    return layers


def full_shape_first(ctx, a, b):
    """Order operands so the first is an activation with the output's shape."""
    out = ctx.out_shape()
    if is_activation(a) and tuple(a.shape) == out:
        return a, b
    if is_activation(b) and tuple(b.shape) == out:
        return b, a
    raise Unsupported(f"neither operand has the output shape {out} (both broadcast)")


def permute_layer(ctx, bottom, order, top=None):
    if not ctx.has_layer("Permute"):
        ctx.unsupported(f"the {ctx.dialect} dialect has no Permute layer")
    return ctx.layer("Permute", [bottom], [top or ctx.top], params={"order": [int(o) for o in order]})


def slice_keep(ctx, bottom, axis, size, start, stop, keep_top, silence):
    """Keep [start, stop) of ``axis``; the other pieces go to a Silence layer."""
    points = [pt for pt in (start, stop) if 0 < pt < size]
    if not points:
        return [], bottom
    tops, kept = [], None
    bounds = [0] + points + [size]
    for lo, hi in zip(bounds, bounds[1:]):
        if lo == start and hi == stop:
            kept = keep_top
            tops.append(keep_top)
        else:
            tops.append(ctx.tmp("unused"))
            silence.append(tops[-1])
    layer = ctx.layer("Slice", [bottom], tops, name=ctx.tmp("slice") if keep_top != ctx.top else ctx.top,
                      params={"axis": axis, "slice_point": points})
    return [layer], kept


def crop(ctx, bottom, shape, cuts, top):
    """Keep [start, stop) on each (axis, start, stop) by chained Slices; the last writes ``top``."""
    cuts = [(ax, lo, hi) for ax, lo, hi in cuts if (lo, hi) != (0, shape[ax])]
    if not cuts:
        raise Unsupported("internal: empty crop")
    layers, silence, cur = [], [], bottom
    for n, (ax, lo, hi) in enumerate(cuts):
        new, cur = slice_keep(ctx, cur, ax, shape[ax], lo, hi, top if n == len(cuts) - 1 else ctx.tmp("part"), silence)
        layers += new
    return layers + silence_unused(ctx, silence)


def silence_unused(ctx, blobs):
    if not blobs:
        return []
    if not ctx.has_layer("Silence"):
        ctx.unsupported(f"the {ctx.dialect} dialect has no Silence layer for the unused slices")
    return [ctx.layer("Silence", blobs, [], name=ctx.tmp("silence"))]


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
