"""Broadcasting of any pattern, expands, constants over an activation, and gathers along an axis."""
from __future__ import annotations

import math

import numpy as np

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions.basics import (
    clip, crop, is_activation, power_layer, prod, reshape_layer, silence_unused,
)


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
