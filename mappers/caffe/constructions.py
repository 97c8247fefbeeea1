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
    if lo == hi:
        return [power_layer(ctx, bottom, scale=0.0, shift=lo, top=top)]
    k = 6.0 / (hi - lo)     # lo + relu6((x - lo) * k) / k
    return [power_layer(ctx, bottom, scale=k, shift=-lo * k, top=shifted), relu6_layer(shifted, clipped),
            power_layer(ctx, clipped, scale=1.0 / k, shift=lo, top=top)]


def round_mode(ctx, ceil):
    if ctx.dialect == "bvlc":
        return {"round_mode": "CEIL" if ceil else "FLOOR"}
    return {"ceil_mode": bool(ceil)}


def power_layer(ctx, bottom, power=1.0, scale=1.0, shift=0.0, top=None):
    params = {}
    if power != 1.0:
        params["power"] = power
    if scale != 1.0:
        params["scale"] = scale
    if shift != 0.0:
        params["shift"] = shift
    return ctx.layer("Power", [bottom], [top or ctx.top], params=params)


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

# =============================================================================================
# Broadcasting and gathers (issue 14, `broadcast` family).
#   broadcast_combine  every elementwise mapper's one path: a (add|mul|max|min) b, any shapes
#   expand_layers      repeat size-1 dims exactly: each output is 1.0 times one input (no sums)
#   constant_over      a constant laid over an activation's shape (Power / Scale with zero weight)
#   assemble           pieces of sources joined along an axis: one Slice per source, one Concat
# =============================================================================================

def padded(shape, ndim):
    """``shape`` aligned right to ``ndim`` dims (leading 1s), as torch broadcasting aligns it."""
    shape = tuple(shape)
    return (1,) * (ndim - len(shape)) + shape


def shape_of(v):
    return tuple(v.shape) if isinstance(v, Blob) and v.shape is not None else ()


def broadcast_shape(ctx, *shapes):
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        ctx.unsupported(f"shapes {', '.join(map(str, shapes))} do not broadcast")


def uniform_value(v):
    """A number, or a constant whose elements are all equal, as float; None otherwise."""
    if isinstance(v, (bool, int, float)):
        return float(v)
    if isinstance(v, Blob) and v.is_constant and v.value is not None and v.value.numel() >= 1:
        flat = v.value.detach().reshape(-1)
        if flat.is_complex():
            return None
        if bool((flat == flat[0]).all()):
            return float(flat[0])
    return None


def _ones(shape):
    return np.ones(shape, np.float32)


def _expand_plan(src, dst):
    """Steps ("reshape", shape) / ("conv", m) / ("deconv", (kh, kw)) that repeat ``src`` to ``dst``."""
    r, s = len(dst), padded(src, len(dst))
    steps = [("reshape", s)] if tuple(src) != s else []
    if r == 4 and s[0] == dst[0]:  # N×C×H×W: channels by a ones 1×1 Convolution, H/W by a ones Deconvolution
        if s[1] == 1 and dst[1] > 1:
            steps.append(("conv", dst[1]))
        kernel = (dst[2] if s[2] == 1 else 1, dst[3] if s[3] == 1 else 1)
        if kernel != (1, 1):
            steps.append(("deconv", kernel))
        return steps
    cur = list(s)
    while True:  # each run of repeated dims: (outer, 1, inner, 1) -> ones Convolution -> (outer, m, inner, 1)
        starts = [d for d in range(r) if cur[d] == 1 and dst[d] > 1]
        if not starts:
            break
        d = e = starts[0]
        while e < r and cur[e] == 1:
            e += 1
        steps += [("reshape", (prod(cur[:d]), 1, prod(cur[e:]), 1)), ("conv", prod(dst[d:e]))]
        cur[d:e] = dst[d:e]
    if len(steps) > 1 or (steps and steps[0][1] != tuple(dst)):
        steps.append(("reshape", tuple(dst)))
    return steps


def expand_layers(ctx, bottom, src, dst, top=None):
    """Layers repeating the size-1 dims of ``src`` (aligned right) up to ``dst``: (layers, name of the result).

    Exact in every runtime: a ones Convolution/Deconvolution output is 1.0 times one input element.
    4-D: a 1×1 Convolution repeats one channel, a grouped Deconvolution spreads over H/W (one layer
    each); other ranks and batch repeats: Reshape to (outer, 1, inner, 1), a ones Convolution per run of
    repeated dims, Reshape to ``dst``.
    """
    src, dst = tuple(src), tuple(dst)
    if len(src) > len(dst) or any(a not in (1, b) for a, b in zip(padded(src, len(dst)), dst)):
        ctx.unsupported(f"shape {src} does not broadcast to {dst}")
    steps = _expand_plan(src, dst)
    if not steps:
        return ([reshape_layer(ctx, bottom, dst, top=top)], top) if top else ([], bottom)
    layers, name, cur = [], bottom, padded(src, len(dst))
    for k, (kind, arg) in enumerate(steps):
        out = top if k == len(steps) - 1 and top else ctx.tmp({"deconv": "spread", "reshape": "as_nd"}.get(kind, "repeat"))
        if kind == "reshape":
            layers.append(reshape_layer(ctx, name, arg, top=out))
            cur = arg
        elif kind == "conv":
            layers.append(ctx.layer("Convolution", [name], [out], blobs=[_ones((arg, 1, 1, 1))],
                                    params={"num_output": arg, "bias_term": False, "kernel_size": [1]}))
            cur = (cur[0], arg) + tuple(cur[2:])
        else:
            c = cur[1]
            params = {"num_output": c, "bias_term": False, "kernel_h": arg[0], "kernel_w": arg[1], "group": c}
            layers.append(ctx.layer("Deconvolution", [name], [out], params=params, blobs=[_ones((c, 1) + arg)]))
        name = out
    return layers, name


def expand_to(ctx, v, out, top=None):
    """(layers, Caffe name) of activation ``v`` repeated to ``out``."""
    if shape_of(v) == tuple(out) and top is None:
        return [], ctx.bottom(v)
    return expand_layers(ctx, ctx.bottom(v), shape_of(v), out, top)


def scale_span(small, out):
    """(axis, dims) when Scale can multiply by ``small`` as a second bottom: its non-1 dims form one span
    equal to ``out`` there (an SE gate N×C×1×1, a 1×C×H×W map); a one-element operand uses a size-1 axis."""
    r, s = len(out), padded(small, len(out))
    idx = [d for d in range(r) if s[d] != 1]
    if not idx:
        ones = [d for d in range(r) if out[d] == 1]
        return (ones[-1], (1,)) if ones else None
    a, b = idx[0], idx[-1]
    while a > 0 and s[a - 1] == out[a - 1]:  # equal leading dims (a batch of 1) join the span
        a -= 1
    return (a, tuple(out[a:b + 1])) if tuple(s[a:b + 1]) == tuple(out[a:b + 1]) else None


def _span_blob(ctx, c, out):
    """(axis, blob) of a constant broadcast to ``out``: its span of non-1 dims, filled in along it."""
    arr = ctx.array(c)
    arr = arr.reshape(padded(arr.shape, len(out)))
    idx = [d for d in range(len(out)) if arr.shape[d] != 1]
    a, b = idx[0], idx[-1]
    target = tuple(out[d] if a <= d <= b else 1 for d in range(len(out)))
    return a, np.ascontiguousarray(np.broadcast_to(arr, target).reshape(out[a:b + 1]))


def _operand_ok(ctx, v):
    if isinstance(v, bool) or not isinstance(v, (Blob, int, float)):
        ctx.unsupported(f"operand of type {type(v).__name__}")
    if isinstance(v, Blob) and v.shape is None:
        ctx.unsupported(f"operand {v.name} has no known shape")


def broadcast_combine(ctx, kind, a, b, coeffs=(1.0, 1.0), top=None):
    """``a`` (kind) ``b`` with torch broadcasting, written to ``top`` (the node's top by default).

    ``kind``: "add" (coeffs[0]·a + coeffs[1]·b), "mul", "max", "min". Operands: activations, constants
    or numbers of any shapes that broadcast. A uniform constant is a Power (or a clamp for max/min),
    another constant a Scale blob over its span; two activations are Eltwise after repeating what
    broadcasts (``expand_layers``), or for mul a two-bottom Scale when one fits a span. min(a, b) is
    -max(-a, -b): Eltwise has no MIN.
    """
    for v in (a, b):
        _operand_ok(ctx, v)
    top = top or ctx.top
    out = broadcast_shape(ctx, shape_of(a), shape_of(b))
    if 0 in out:
        ctx.unsupported(f"empty result of shape {out}")
    if is_activation(a) and is_activation(b):
        return _combine_activations(ctx, kind, a, b, coeffs, out, top)
    if not (is_activation(a) or is_activation(b)):
        ctx.unsupported("both operands are constants")
    x, kx, c, kc = (a, coeffs[0], b, coeffs[1]) if is_activation(a) else (b, coeffs[1], a, coeffs[0])
    layers, xb = expand_to(ctx, x, out)
    v = uniform_value(c)
    if v is not None:
        if kind == "add":
            return layers + [power_layer(ctx, xb, scale=kx, shift=kc * v, top=top)]
        if kind == "mul":
            return layers + [power_layer(ctx, xb, scale=v, top=top)]
        return layers + clip(ctx, xb, v, math.inf, top) if kind == "max" else layers + clip(ctx, xb, -math.inf, v, top)
    axis, blob = _span_blob(ctx, c, out)
    span = {"axis": axis, "num_axes": blob.ndim}
    if kind == "add":
        return layers + [ctx.layer("Scale", [xb], [top], params={**span, "bias_term": True},
                                   blobs=[np.full(blob.shape, kx, np.float32), kc * blob])]
    if kind == "mul":
        return layers + [ctx.layer("Scale", [xb], [top], params={**span, "bias_term": False}, blobs=[blob])]
    sign = 1.0 if kind == "max" else -1.0
    if sign < 0:
        neg = ctx.tmp("neg")
        layers.append(power_layer(ctx, xb, scale=-1.0, top=neg))
        xb = neg
    const, high = ctx.tmp("const"), ctx.tmp("max") if sign < 0 else top
    layers += [ctx.layer("Scale", [xb], [const], params={**span, "bias_term": True},
                         blobs=[np.zeros(blob.shape, np.float32), sign * blob]),
               ctx.layer("Eltwise", [xb, const], [high], params={"operation": "MAX"})]
    return layers + ([power_layer(ctx, high, scale=-1.0, top=top)] if sign < 0 else [])


def _combine_activations(ctx, kind, a, b, coeffs, out, top):
    if kind == "mul":
        plans = []
        for big, small in ((a, b), (b, a)):
            fit = scale_span(shape_of(small), out)
            if fit is not None and shape_of(small) != tuple(out):  # a full-shape factor is just Eltwise PROD
                cost = len(_expand_plan(shape_of(big), out)) + (shape_of(small) != fit[1]) + 1
                plans.append((cost, big, small, fit))
        repeats = len(_expand_plan(shape_of(a), out)) + len(_expand_plan(shape_of(b), out))
        if plans and repeats and min(plans, key=lambda p: p[0])[0] <= repeats + 1:  # Scale reads the small one as is
            _, big, small, (axis, dims) = min(plans, key=lambda p: p[0])
            layers, name = expand_to(ctx, big, out)
            operand = ctx.bottom(small)
            if shape_of(small) != dims:
                operand = ctx.tmp("broadcast")
                layers.append(reshape_layer(ctx, ctx.bottom(small), dims, top=operand))
            return layers + [ctx.layer("Scale", [name, operand], [top],
                                       params={"axis": axis, "num_axes": len(dims), "bias_term": False})]
    if shape_of(a) != tuple(out) and shape_of(b) == tuple(out):  # the full-shape operand first (all ops commute)
        a, b, coeffs = b, a, tuple(reversed(coeffs))
    la, na = expand_to(ctx, a, out)
    lb, nb = expand_to(ctx, b, out)
    layers = la + lb
    if kind == "add":
        params = {"operation": "SUM"}
        if tuple(coeffs) != (1.0, 1.0):
            params["coeff"] = [float(k) for k in coeffs]
        return layers + [ctx.layer("Eltwise", [na, nb], [top], params=params)]
    if kind in ("mul", "max"):
        return layers + [ctx.layer("Eltwise", [na, nb], [top], params={"operation": "PROD" if kind == "mul" else "MAX"})]
    negs = [ctx.tmp("neg"), ctx.tmp("neg")]
    high = ctx.tmp("max")
    return layers + [power_layer(ctx, na, scale=-1.0, top=negs[0]), power_layer(ctx, nb, scale=-1.0, top=negs[1]),
                     ctx.layer("Eltwise", negs, [high], params={"operation": "MAX"}),
                     power_layer(ctx, high, scale=-1.0, top=top)]


def constant_over(ctx, value, shape, template, template_shape, top):
    """A blob of constant ``value`` (array or number, broadcastable to ``shape``) made from activation
    ``template``: the template cut or repeated to ``shape``, then Power(scale=0, shift=v) or a Scale with
    zero weights and the value as bias. 0·x is 0 for finite x; Caffe's Power ignores x altogether,
    OpenCV's gives nan where x is inf/nan."""
    layers, name = _template_of_shape(ctx, template, tuple(template_shape), tuple(shape))
    arr = np.asarray(value, dtype=np.float32)
    if arr.size and np.all(arr == arr.reshape(-1)[0]):
        return layers + [power_layer(ctx, name, scale=0.0, shift=float(arr.reshape(-1)[0]), top=top)]
    arr = np.broadcast_to(arr.reshape(padded(arr.shape, len(shape))), shape)
    idx = [d for d in range(len(shape)) if shape[d] != 1] or [0]
    a, b = idx[0], idx[-1]
    blob = np.ascontiguousarray(arr).reshape(shape[a:b + 1])
    return layers + [ctx.layer("Scale", [name], [top], params={"axis": a, "num_axes": blob.ndim, "bias_term": True},
                               blobs=[np.zeros(blob.shape, np.float32), blob])]


def _template_of_shape(ctx, bottom, have, want):
    """Some activation of shape ``want`` from ``bottom`` (shape ``have``): cut, or cut to 1 and repeated."""
    if have == want:
        return [], bottom
    layers = []
    if len(have) != len(want):  # one element of it, as (1,)*len(want)
        flat = ctx.tmp("flat")
        layers.append(reshape_layer(ctx, bottom, (1, prod(have)), top=flat))
        bottom, have = flat, (1, prod(have))
        if have[1] > 1:
            one = ctx.tmp("one")
            layers += crop(ctx, bottom, have, [(1, 0, 1)], one)
            bottom = one
        seed = ctx.tmp("seed")
        layers.append(reshape_layer(ctx, bottom, (1,) * len(want), top=seed))
        bottom, have = seed, (1,) * len(want)
    cuts = [(d, 0, want[d] if want[d] <= have[d] else 1) for d in range(len(want))]
    cut_shape = tuple(hi for _, _, hi in cuts)
    if cut_shape != have:
        part = ctx.tmp("cut")
        layers += crop(ctx, bottom, have, cuts, part)
        bottom = part
    more, name = expand_layers(ctx, bottom, cut_shape, want)
    return layers + more, name


def assemble(ctx, axis, sources, segments, top):
    """Concat along ``axis`` of pieces ``(source index, start, stop)`` of ``sources`` (``[(name, size)]``).

    Each source is cut by one Slice at every segment border it needs (unused pieces to one Silence);
    a gather, flip, roll or setitem is one or two Slices and one Concat, all exact copies.
    """
    layers, silence, pieces = [], [], {}
    for k, (name, size) in enumerate(sources):
        points = sorted({p for src, lo, hi in segments if src == k for p in (lo, hi) if 0 < p < size})
        if not points:
            pieces[k] = [(0, size, name)]
            continue
        bounds = [0] + points + [size]
        tops = [ctx.tmp("piece") for _ in bounds[1:]]
        layers.append(ctx.layer("Slice", [name], tops, name=ctx.tmp("slice"),
                                params={"axis": axis, "slice_point": points}))
        pieces[k] = list(zip(bounds, bounds[1:], tops))
    used, bottoms = set(), []
    for k, lo, hi in segments:
        for a, b, name in pieces[k]:
            if lo <= a and b <= hi:
                bottoms.append(name)
                used.add(name)
    silence = [name for k in pieces for _, _, name in pieces[k] if name not in used and name not in dict(sources)]
    layers.append(ctx.layer("Concat", bottoms, [top], params={"axis": axis}))
    return layers + silence_unused(ctx, silence)


def gather_axis(ctx, bottom, shape, axis, positions, top):
    """out[.., i, ..] = x[.., positions[i], ..] along ``axis``: a crop for one run, Reshape + Slice for a long
    stride (``x[:, ::2]``), else runs of consecutive positions cut by one Slice and joined by one Concat."""
    pos, n = [int(p) for p in positions], shape[axis]
    if not pos or any(not 0 <= p < n for p in pos):
        ctx.unsupported(f"positions {pos[:8]} along an axis of size {n}")
    runs = []
    for p in pos:
        if runs and p == runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([p, p + 1])
    if len(runs) == 1:
        lo, hi = runs[0]
        return crop(ctx, bottom, shape, [(axis, lo, hi)], top) if (lo, hi) != (0, n) else \
            [reshape_layer(ctx, bottom, shape, top=top)]
    step, m = pos[1] - pos[0], len(pos)
    if m >= 4 and step > 1 and pos == list(range(pos[0], pos[0] + step * m, step)) and pos[0] + step * m <= n:
        return _strided_pick(ctx, bottom, shape, axis, pos[0], step, m, top)
    return assemble(ctx, axis, [(bottom, n)], [(0, lo, hi) for lo, hi in runs], top)


def _strided_pick(ctx, bottom, shape, axis, start, step, m, top):
    """x[.., start::step, ..] (m picks) as crop -> Reshape (.., m, step, ..) -> keep index 0 -> Reshape."""
    layers, name = [], bottom
    if (start, start + step * m) != (0, shape[axis]):
        name = ctx.tmp("span")
        layers += crop(ctx, bottom, shape, [(axis, start, start + step * m)], name)
    split = tuple(shape[:axis]) + (m, step) + tuple(shape[axis + 1:])
    grid, picked = ctx.tmp("grid"), ctx.tmp("picked")
    layers.append(reshape_layer(ctx, name, split, top=grid))
    layers += crop(ctx, grid, split, [(axis + 1, 0, 1)], picked)
    return layers + [reshape_layer(ctx, picked, tuple(shape[:axis]) + (m,) + tuple(shape[axis + 1:]), top=top)]
