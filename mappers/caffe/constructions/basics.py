"""Small constructions every family uses: convolution and pooling fields, Reshape, Power, a clamp
from ReLU/ReLU6, Permute, crops by Slices, Silence, and reading numbers out of operands."""
from __future__ import annotations

import math
import operator
from functools import reduce

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
    return [weight] + ([ctx.weight(bias)] if bias is not None else [])


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
