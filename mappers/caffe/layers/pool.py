"""Pooling: max/average windows and adaptive pooling, with Caffe's output-size rounding."""
from __future__ import annotations

from tracecap.mappers.caffe.constructions import pool_spatial, round_mode
from tracecap.mappers.caffe.registry import pair, register


def _caffe_pool_size(size, k, s, p, ceil):
    n = size + 2 * p - k
    out = (-(-n // s) if ceil else n // s) + 1
    if p and (out - 1) * s >= size + p:  # Caffe: the last window must start inside the image
        out -= 1
    return out


def _pool(ctx, method, kernel, stride, pad, ceil):
    in_shape = ctx.in_shape()
    if len(in_shape) != 4:
        ctx.unsupported(f"pooling on a {len(in_shape)}-D tensor; Caffe pools N×C×H×W")
    want = ctx.out_shape()[2:]
    got = tuple(_caffe_pool_size(in_shape[2 + i], kernel[i], stride[i], pad[i], ceil) for i in range(2))
    if got != want:  # rounding may flip the mode that reproduces PyTorch's size
        alt = tuple(_caffe_pool_size(in_shape[2 + i], kernel[i], stride[i], pad[i], not ceil) for i in range(2))
        if alt != want:
            ctx.unsupported(f"Caffe pooling gives {got} (or {alt}), PyTorch {want}")
        ceil = not ceil
    params = {"pool": method, **pool_spatial(kernel, stride, pad), **round_mode(ctx, ceil)}
    return [ctx.layer("Pooling", [ctx.bottom(ctx.node.params["input"])], params=params)]


@register("max_pool2d")
def max_pool2d(node, ctx):
    p = node.params
    if p["return_indices"]:
        ctx.unsupported("max_pool2d(return_indices=True)")
    if pair(p["dilation"], "dilation") != (1, 1):
        ctx.unsupported("dilated max pooling")
    kernel = pair(p["kernel_size"], "kernel_size")
    stride = pair(p["stride"] if p["stride"] not in (None, (), []) else kernel, "stride")
    return _pool(ctx, "MAX", kernel, stride, pair(p["padding"], "padding"), p["ceil_mode"])


@register("avg_pool2d")
def avg_pool2d(node, ctx):
    p = node.params
    kernel = pair(p["kernel_size"], "kernel_size")
    stride = pair(p["stride"] if p["stride"] not in (None, (), []) else kernel, "stride")
    pad = pair(p["padding"], "padding")
    if p.get("divisor_override"):
        ctx.unsupported("avg_pool2d(divisor_override=...)")
    if pad != (0, 0) and not p["count_include_pad"]:
        ctx.unsupported("avg_pool2d(count_include_pad=False) with padding: Caffe's AVE pooling counts the padding")
    return _pool(ctx, "AVE", kernel, stride, pad, p["ceil_mode"])


@register("adaptive_avg_pool2d", "adaptive_max_pool2d")
def adaptive_pool2d(node, ctx):
    method = "AVE" if node.op == "adaptive_avg_pool2d" else "MAX"
    if node.params.get("return_indices"):
        ctx.unsupported("adaptive_max_pool2d(return_indices=True)")
    if len(ctx.in_shape()) != 4:
        ctx.unsupported(f"{node.op} of a {len(ctx.in_shape())}-D tensor; the Caffe layer takes N×C×H×W")
    n, c, h, w = ctx.in_shape()
    oh, ow = ctx.out_shape()[2:]
    x = ctx.bottom(node.params["input"])
    if (oh, ow) == (1, 1):
        return [ctx.layer("Pooling", [x], params={"pool": method, "global_pooling": True})]
    if h % oh or w % ow:
        ctx.unsupported(f"adaptive pooling {h}x{w} -> {oh}x{ow}: only exact divisions map to a fixed Caffe window")
    k = (h // oh, w // ow)
    return [ctx.layer("Pooling", [x], params={"pool": method, **pool_spatial(k, k, (0, 0)),
                                             **round_mode(ctx, False)})]
