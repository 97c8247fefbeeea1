"""Reductions over any axes (mean, sum, amax/amin, max/min over a dim), logsumexp, and torch.stack.

A reduction runs over maximal runs of adjacent reduced axes (axes of size 1 change nothing and are
ignored); each run is one exact layer on a view of the blob (``constructions.pool_rows``: Pooling
MAX/AVE; ``constructions.sum_rows``: a ones 1×1 Convolution), and one Reshape gives the output
shape, ``keepdim`` or not. Minima are maxima of the negated input (Power scale -1 before and after).
"""
from __future__ import annotations

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions import (as_view, integer, pool_rows, power_layer, reshape_layer, split_at_run,
                                                  spread_rows, sum_rows)
from tracecap.mappers.caffe.registry import norm_axis, register

_METHOD = {"mean": "AVE", "sum": "SUM", "amax": "MAX", "max": "MAX", "amin": "MIN", "min": "MIN"}


def reduced_axes(ctx, dims, ndim):
    """The sorted axes a ``dim=`` argument names; None, () and [] mean every axis."""
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(ndim))
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        ctx.unsupported(f"reduction over dims {dims!r} (expected integers)")
    axes = sorted({norm_axis(d, max(ndim, 1)) for d in dims})
    if any(not 0 <= a < max(ndim, 1) for a in axes):
        ctx.unsupported(f"reduction over dims {dims!r} of a {ndim}-D tensor")
    return [a for a in axes if a < ndim]


def axis_runs(shape, axes):
    """Maximal [start, stop) runs of reduced axes of size > 1, adjacent up to axes of size 1."""
    runs, start, last = [], None, None
    for a, size in enumerate(shape):
        if size == 1:
            continue
        if a in axes:
            if start is None:
                start = a
            last = a
        elif start is not None:
            runs.append((start, last + 1))
            start = None
    if start is not None:
        runs.append((start, last + 1))
    return runs


def reduce_runs(ctx, x, shape, runs, method, top):
    """Reduce ``x`` (``shape``) over ``runs`` with method AVE, MAX, MIN or SUM and write ``top`` with
    the output shape of the node (a final Reshape when the last layer's blob has another shape)."""
    out_shape = ctx.out_shape() or (1,)   # a 0-d result is a 1-element blob: OpenCV cannot reshape to 0-d
    layers, cur, logical, actual = [], x, list(shape), tuple(shape)
    if method == "MIN":
        negated = ctx.tmp("negated")
        layers.append(power_layer(ctx, x, scale=-1.0, top=negated))
        cur = negated
    for start, stop in runs:
        part = ctx.tmp("reduced")
        if method == "SUM":
            new, actual = sum_rows(ctx, cur, tuple(logical), start, stop, part, actual)
        else:
            new, actual = pool_rows(ctx, cur, tuple(logical), start, stop, "MAX" if method == "MIN" else method,
                                    part, actual)
        layers += new
        logical[start:stop] = [1] * (stop - start)
        cur = part
    if method == "MIN":
        restored = ctx.tmp("restored")
        layers.append(power_layer(ctx, cur, scale=-1.0, top=restored))
        cur = restored
    if cur != x and tuple(actual) == tuple(out_shape):
        layers[-1].tops[-1] = layers[-1].name = top   # the last layer writes the output itself
    else:
        layers.append(reshape_layer(ctx, cur, out_shape, top=top))
    return layers


def _indices_used(node):
    return len(node.tops) > 1 and (node.tops[1].users or node.tops[1] in node.graph.outputs)


@register("mean", "sum", "amax", "amin", "max", "min")
def reduction(node, ctx):
    p = node.params
    dims = p.get("dim")
    if node.op in ("max", "min") and isinstance(dims, Blob):   # torch.max(a, b): elementwise
        return _elementwise(node, ctx, p["input"], dims)
    if p.get("dtype") is not None:
        ctx.unsupported(f"{node.op}(dtype={p['dtype']}): Caffe computes in float32 only")
    if node.op in ("max", "min") and _indices_used(node):
        ctx.unsupported(f"the indices of {node.op}(dim=...) are used: an argmax/argmin has no layer that both "
                        f"OpenCV and Caffe run (OpenCV has no ArgMax)")
    shape = ctx.in_shape()
    axes = reduced_axes(ctx, dims, len(shape))
    x = ctx.bottom(p["input"])
    return reduce_runs(ctx, x, shape, axis_runs(shape, axes), _METHOD[node.op], ctx.top)


def _elementwise(node, ctx, a, b):
    """torch.max(a, b) is Eltwise MAX; torch.min(a, b) = -max(-a, -b) (Caffe's Eltwise has no MIN)."""
    if not (isinstance(a, Blob) and a.shape == b.shape and not a.is_constant and not b.is_constant):
        ctx.unsupported(f"elementwise {node.op} of {a!r} and {b!r} (only two activations of the same shape)")
    if node.op == "max":
        return [ctx.layer("Eltwise", [ctx.bottom(a), ctx.bottom(b)], params={"operation": "MAX"})]
    na, nb, m = ctx.tmp("negated"), ctx.tmp("negated"), ctx.tmp("max")
    return [power_layer(ctx, ctx.bottom(a), scale=-1.0, top=na), power_layer(ctx, ctx.bottom(b), scale=-1.0, top=nb),
            ctx.layer("Eltwise", [na, nb], [m], params={"operation": "MAX"}), power_layer(ctx, m, scale=-1.0)]


@register("logsumexp")
def logsumexp(node, ctx):
    """m + log(sum(exp(x - m))) with m the maximum over the dims, as PyTorch computes it (no overflow):
    Pooling MAX, a ones Convolution spreading m back, Eltwise, Exp, a ones Convolution summing, Log, Eltwise."""
    shape = ctx.in_shape()
    axes = reduced_axes(ctx, node.params["dim"], len(shape))
    runs = axis_runs(shape, axes)
    x = ctx.bottom(node.params["input"])
    if len(runs) != 1:
        if not runs:
            return [reshape_layer(ctx, x, ctx.out_shape(), top=ctx.top)]   # log(exp(x)) over size-1 dims
        ctx.unsupported(f"logsumexp over the non-adjacent dims {axes} of {shape}")
    (start, stop), = runs
    outer, rows, inner = split_at_run(shape, start, stop)
    column = (outer, rows, inner, 1)
    peak, spread, shifted, exps, total, logs = (ctx.tmp(w) for w in ("max", "spread", "shifted", "exp", "sum", "log"))
    layers, peak_shape = pool_rows(ctx, x, shape, start, stop, "MAX", peak)
    new, spread_shape = spread_rows(ctx, peak, peak_shape, outer, rows, inner, spread)
    layers += new
    new, spread_col = as_view(ctx, spread, spread_shape, column, "spread_column")
    layers += new
    new, x4 = as_view(ctx, x, shape, column)
    layers += new
    layers.append(ctx.layer("Eltwise", [x4, spread_col], [shifted],
                            params={"operation": "SUM", "coeff": [1.0, -1.0]}))
    layers.append(ctx.layer("Exp", [shifted], [exps]))
    new, _ = sum_rows(ctx, exps, column, 1, 2, total)
    layers += new
    layers.append(ctx.layer("Log", [total], [logs]))
    new, peak_col = as_view(ctx, peak, peak_shape, (outer, 1, inner, 1), "max_column")
    layers += new
    added = ctx.tmp("lse")
    layers.append(ctx.layer("Eltwise", [logs, peak_col], [added], params={"operation": "SUM"}))
    return layers + [reshape_layer(ctx, added, ctx.out_shape(), top=ctx.top)]


@register("stack")
def stack(node, ctx):
    """torch.stack: a Concat on the stacked axis and one Reshape (the memory order is the same); stacking
    behind the last axis gives each input a trailing axis of 1 first."""
    tensors = node.params["tensors"]
    if not isinstance(tensors, (list, tuple)) or not tensors or not all(isinstance(t, Blob) for t in tensors):
        ctx.unsupported("stack of something other than a list of tensors")
    tensors = list(tensors)
    shape = tuple(tensors[0].shape)
    ndim = len(shape)
    dim = norm_axis(integer(node.params["dim"], "dim"), ndim + 1)
    if not 0 <= dim <= ndim or any(tuple(t.shape) != shape for t in tensors):
        ctx.unsupported(f"stack at dim {node.params['dim']} of {len(tensors)} tensors of {shape}")
    bottoms = [ctx.bottom(t) for t in tensors]
    if len(bottoms) == 1:
        return [reshape_layer(ctx, bottoms[0], ctx.out_shape(), top=ctx.top)]
    if dim < ndim:
        joined = ctx.tmp("concat")
        return [ctx.layer("Concat", bottoms, [joined], params={"axis": dim}),
                reshape_layer(ctx, joined, ctx.out_shape(), top=ctx.top)]
    layers, expanded = [], {}
    for b in bottoms:   # the same tensor stacked twice is reshaped once
        if b not in expanded:
            expanded[b] = ctx.tmp("unsqueezed")
            layers.append(reshape_layer(ctx, b, shape + (1,), top=expanded[b]))
    return layers + [ctx.layer("Concat", [expanded[b] for b in bottoms], params={"axis": dim})]
