"""Resampling: ``interpolate`` / ``upsample``."""
from __future__ import annotations

import numpy as np

from tracecap.mappers.caffe.registry import register


@register("interpolate")
def interpolate(node, ctx):
    p = node.params
    if len(ctx.in_shape()) != 4:
        ctx.unsupported(f"{node.op} of a {len(ctx.in_shape())}-D tensor; the Caffe layer takes N×C×H×W")
    n, c, h, w = ctx.in_shape()
    oh, ow = ctx.out_shape()[2:]
    if p["mode"] != "nearest":
        ctx.unsupported(f"interpolate(mode={p['mode']!r}): only nearest upsampling by an integer factor "
                        f"maps exactly to Caffe")
    if oh % h or ow % w or oh // h != ow // w:
        ctx.unsupported(f"nearest resize {h}x{w} -> {oh}x{ow} is not one integer factor")
    s = oh // h
    # nearest x s == a depthwise Deconvolution with an s×s kernel of ones and stride s
    weight = np.ones((c, 1, s, s), np.float32)
    params = {"num_output": c, "bias_term": False, "kernel_size": [s], "stride": [s], "group": c}
    return [ctx.layer("Deconvolution", [ctx.bottom(p["input"])], params=params, blobs=[weight])]
