"""3-D pooling (``avg_pool3d``/``max_pool3d``, e.g. the cross-map LRN of 2017 code written with
``avg_pool3d``) as Caffe 2-D pooling, one axis group at a time.

A 3-D window is the product of a depth window and an H×W window, and both MAX and AVE with the
padding counted (``count_include_pad=True``: each axis clips its window to input + padding, in
PyTorch as in Caffe) factor exactly: pool the depth of an (N·C, 1, D, H·W) view, then H×W of an
(N·C, D', H, W) view. Either pass is left out when its window is 1 with stride 1 and no padding.
"""
from __future__ import annotations

from tracecap.mappers.caffe.constructions import as_view, integer, pool_spatial, reshape_layer, round_mode
from tracecap.mappers.caffe.layers.pool import _caffe_pool_size
from tracecap.mappers.caffe.registry import register


def _triple(ctx, v, what):
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return (integer(v[0], what),) * 3
        if len(v) == 3:
            return tuple(integer(i, what) for i in v)
        ctx.unsupported(f"{what} {tuple(v)} is not 3-D")
    return (integer(v, what),) * 3


def _ceil_for(ctx, sizes, kernel, stride, pad, ceil, want):
    """The Caffe rounding that gives PyTorch's output sizes ``want`` on these axes."""
    for mode in (ceil, not ceil):
        if tuple(_caffe_pool_size(n, k, s, p, mode) for n, k, s, p in zip(sizes, kernel, stride, pad)) == want:
            return mode
    ctx.unsupported(f"Caffe pooling cannot give PyTorch's output size {want} from {sizes}")


def _pool_pass(ctx, x, shape, view, kernel, stride, pad, method, ceil, top):
    layers, src = as_view(ctx, x, shape, view)
    params = {"pool": method, **pool_spatial(kernel, stride, pad), **round_mode(ctx, ceil)}
    return layers + [ctx.layer("Pooling", [src], [top], name=top, params=params)]


@register("avg_pool3d", "max_pool3d")
def pool3d(node, ctx):
    p = node.params
    method = "AVE" if node.op == "avg_pool3d" else "MAX"
    shape = ctx.in_shape()
    if len(shape) != 5 or len(ctx.out_shape()) != 5:
        ctx.unsupported(f"{node.op} of {shape} to {ctx.out_shape()} (only N×C×D×H×W)")
    kernel = _triple(ctx, p["kernel_size"], "kernel_size")
    stride = _triple(ctx, p["stride"] if p["stride"] not in (None, (), []) else kernel, "stride")
    pad = _triple(ctx, p["padding"], "padding")
    if min(kernel + stride) < 1 or min(pad) < 0 or any(2 * q > k for q, k in zip(pad, kernel)):
        ctx.unsupported(f"{node.op} with kernel {kernel}, stride {stride}, padding {pad}")
    if method == "AVE" and p.get("divisor_override"):
        ctx.unsupported("avg_pool3d(divisor_override=...)")
    if method == "AVE" and any(pad) and not p["count_include_pad"]:
        ctx.unsupported("avg_pool3d(count_include_pad=False) with padding: Caffe's AVE pooling counts the padding")
    if method == "MAX" and (p.get("return_indices") or _triple(ctx, p["dilation"], "dilation") != (1, 1, 1)):
        ctx.unsupported("max_pool3d with dilation or return_indices")
    n, c, d, h, w = shape
    od, oh, ow = ctx.out_shape()[2:]
    layers, cur, cur_shape = [], ctx.bottom(p["input"]), shape
    if (kernel[0], stride[0], pad[0]) != (1, 1, 0):
        ceil = _ceil_for(ctx, (d,), kernel[:1], stride[:1], pad[:1], p["ceil_mode"], (od,))
        top = ctx.tmp("depth_pool")
        layers += _pool_pass(ctx, cur, shape, (n * c, 1, d, h * w), (kernel[0], 1), (stride[0], 1), (pad[0], 0),
                             method, ceil, top)
        cur, cur_shape = top, (n * c, 1, od, h * w)
    if (kernel[1:], stride[1:], pad[1:]) != ((1, 1), (1, 1), (0, 0)):
        ceil = _ceil_for(ctx, (h, w), kernel[1:], stride[1:], pad[1:], p["ceil_mode"], (oh, ow))
        top = ctx.tmp("plane_pool")
        layers += _pool_pass(ctx, cur, cur_shape, (n * c, od, h, w), kernel[1:], stride[1:], pad[1:], method,
                             ceil, top)
        cur, cur_shape = top, (n * c, od, oh, ow)
    return layers + [reshape_layer(ctx, cur, ctx.out_shape(), top=ctx.top)]
