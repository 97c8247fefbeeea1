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
