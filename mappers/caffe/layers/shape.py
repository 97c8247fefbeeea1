"""Shape ops: reshape/flatten, permute/transpose, pixel shuffle, split and concat.

Indexing, gathers, repeats and writes into slices (getitem, setitem, expand, repeat, flip ...)
live in ``layers/select.py``.
"""
from __future__ import annotations

import numpy as np

from tracecap.mappers.caffe.constructions import (
    constant_over, is_activation, reshape_layer, prod, permute_layer, shape_of, silence_unused,
)
from tracecap.mappers.caffe.registry import norm_axis, register


@register("cat")
def cat(node, ctx):
    """Concat; a constant piece (``torch.cat([x, torch.zeros_like(x)], 1)``, a zero-started state) is
    laid over an activation piece by ``constant_over``."""
    tensors = list(node.params["tensors"])
    axis = norm_axis(node.params["dim"], len(ctx.out_shape()))
    template = next((t for t in tensors if is_activation(t)), None)
    if template is None:
        ctx.unsupported("cat of constants only")
    layers, bottoms = [], []
    for t in tensors:
        if is_activation(t):
            bottoms.append(ctx.bottom(t))
            continue
        if shape_of(t) and 0 in shape_of(t):
            continue  # torch.cat skips empty pieces
        name = ctx.tmp("constant")
        layers += constant_over(ctx, ctx.array(t), shape_of(t), ctx.bottom(template), shape_of(template), name)
        bottoms.append(name)
    return layers + [ctx.layer("Concat", bottoms, params={"axis": axis})]


@register("view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
def reshape(node, ctx):
    src, out = ctx.in_shape(), ctx.out_shape()
    x = ctx.bottom(node.params["input"])
    for axis in range(1, len(src)):  # flatten everything from `axis` on: Caffe's Flatten
        if out == src[:axis] + (prod(src[axis:]),):
            return [ctx.layer("Flatten", [x], params={"axis": axis} if axis != 1 else {})]
    return [reshape_layer(ctx, x, out, top=ctx.top)]


@register("permute")
def permute(node, ctx):
    ndim = len(ctx.in_shape())
    order = [norm_axis(d, ndim) for d in node.params["dims"]]
    return [permute_layer(ctx, ctx.bottom(node.params["input"]), order)]


@register("transpose", "t")
def transpose(node, ctx):
    ndim = len(ctx.in_shape())
    if node.op == "t":
        d0, d1 = 0, ndim - 1
    else:
        d0, d1 = norm_axis(node.params["dim0"], ndim), norm_axis(node.params["dim1"], ndim)
    order = list(range(ndim))
    order[d0], order[d1] = order[d1], order[d0]
    return [permute_layer(ctx, ctx.bottom(node.params["input"]), order)]


@register("pixel_shuffle")
def pixel_shuffle(node, ctx):
    if len(ctx.in_shape()) != 4:
        ctx.unsupported(f"{node.op} of a {len(ctx.in_shape())}-D tensor; the Caffe layer takes N×C×H×W")
    n, c, h, w = ctx.in_shape()
    r = int(node.params["upscale_factor"])
    a, b = ctx.tmp("split"), ctx.tmp("permute")
    return [reshape_layer(ctx, ctx.bottom(node.params["input"]), (n, c // (r * r), r, r, h, w), top=a),
            permute_layer(ctx, a, (0, 1, 4, 2, 5, 3), top=b),
            reshape_layer(ctx, b, (n, c // (r * r), h * r, w * r), top=ctx.top)]


@register("chunk", "split")
def split(node, ctx):
    shape = ctx.in_shape()
    axis = norm_axis(node.params["dim"], len(shape))
    sizes = [t.shape[axis] for t in node.tops]
    points = list(np.cumsum(sizes)[:-1].astype(int))
    tops = [t.name for t in node.tops]
    unused = [t.name for t in node.tops if not t.users and t not in node.graph.outputs]
    return [ctx.layer("Slice", [ctx.bottom(node.params["input"])], tops, name=node.name,
                      params={"axis": axis, "slice_point": points})] + silence_unused(ctx, unused)
