"""Shape ops: reshape/flatten, permute/transpose, pixel shuffle, slicing, split and concat."""
from __future__ import annotations

import numpy as np

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions import reshape_layer, prod, permute_layer, crop, silence_unused
from tracecap.mappers.caffe.registry import norm_axis, register


@register("cat")
def cat(node, ctx):
    tensors = node.params["tensors"]
    axis = norm_axis(node.params["dim"], len(ctx.out_shape()))
    return [ctx.layer("Concat", [ctx.bottom(t) for t in tensors], params={"axis": axis})]


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
    n, c, h, w = ctx.in_shape()
    r = int(node.params["upscale_factor"])
    a, b = ctx.tmp("split"), ctx.tmp("permute")
    return [reshape_layer(ctx, ctx.bottom(node.params["input"]), (n, c // (r * r), r, r, h, w), top=a),
            permute_layer(ctx, a, (0, 1, 4, 2, 5, 3), top=b),
            reshape_layer(ctx, b, (n, c // (r * r), h * r, w * r), top=ctx.top)]


@register("getitem")
def getitem(node, ctx):
    shape = ctx.in_shape()
    index = node.params["index"]
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, Blob) or (not isinstance(i, (int, slice)) and i is not Ellipsis and i is not None)
           for i in index):
        ctx.unsupported("indexing with tensors, lists or booleans (only slices, ints, None and ...)")
    if index.count(Ellipsis) > 1:
        ctx.unsupported("more than one Ellipsis")
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    if Ellipsis in index:
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(shape) - used) + index[k + 1:]
    cuts = []  # (axis, start, stop)
    axis = 0
    for i in index:
        if i is None:
            continue
        size = shape[axis]
        if isinstance(i, int):
            start = i + size if i < 0 else i
            cuts.append((axis, start, start + 1))
        else:
            start, stop, step = i.indices(size)
            if step != 1:
                ctx.unsupported(f"slicing with step {step}")
            if (start, stop) != (0, size):
                cuts.append((axis, start, stop))
        axis += 1
    if not any(isinstance(i, int) or i is None for i in index) and cuts:
        return crop(ctx, ctx.bottom(node.params["input"]), shape, cuts, ctx.top)
    part = ctx.tmp("part")
    layers = crop(ctx, ctx.bottom(node.params["input"]), shape, cuts, part) if cuts else []
    source = part if cuts else ctx.bottom(node.params["input"])
    return layers + [reshape_layer(ctx, source, ctx.out_shape(), top=ctx.top)]


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
