"""Reductions: means over spatial dims as AVE pooling."""
from __future__ import annotations

from tracecap.mappers.caffe.constructions import pool_spatial, reshape_layer, round_mode
from tracecap.mappers.caffe.registry import norm_axis, register


@register("mean")
def mean(node, ctx):
    """Means over trailing spatial dims as AVE pooling (exact), then a Reshape if keepdim=False."""
    p = node.params
    shape = ctx.in_shape()
    ndim = len(shape)
    dims = p["dim"]
    if dims is None or p.get("dtype") is not None:
        ctx.unsupported("mean over all elements or with dtype=")
    dims = sorted({norm_axis(d, ndim) for d in (dims if isinstance(dims, (list, tuple)) else [dims])})
    if ndim == 4 and set(dims) <= {2, 3}:
        x4, shape4, layers = ctx.bottom(p["input"]), shape, []
    elif ndim == 3 and dims == [2]:
        shape4 = shape + (1,)
        x4 = ctx.tmp("as4d")
        layers = [reshape_layer(ctx, ctx.bottom(p["input"]), shape4, top=x4)]
    else:
        ctx.unsupported(f"mean over dims {dims} of a {ndim}-D tensor (only spatial dims map to Caffe pooling)")
    kernel = (shape[2] if 2 in dims else 1, shape[3] if 3 in dims else 1) if ndim == 4 else (shape4[2], 1)
    pooled_shape = (shape4[0], shape4[1], shape4[2] // kernel[0], shape4[3] // kernel[1])
    out = ctx.out_shape()
    pooled = ctx.top if pooled_shape == out else ctx.tmp("pool")
    params = {"pool": "AVE", **pool_spatial(kernel, (1, 1), (0, 0)), **round_mode(ctx, False)}
    if kernel == tuple(shape4[2:]):
        params = {"pool": "AVE", "global_pooling": True}
    layers.append(ctx.layer("Pooling", [x4], [pooled], params=params))
    if pooled != ctx.top:
        layers.append(reshape_layer(ctx, pooled, out, top=ctx.top))
    return layers
