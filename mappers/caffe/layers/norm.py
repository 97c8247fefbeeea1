"""Normalization layers: batch norm."""
from __future__ import annotations

import numpy as np

from tracecap.mappers.caffe.registry import register


@register("batch_norm")
def batch_norm(node, ctx):
    p = node.params
    if p["training"]:
        ctx.unsupported("batch_norm in training mode normalises with batch statistics; call model.eval()")
    if p["running_mean"] is None or p["running_var"] is None:
        ctx.unsupported("batch_norm without running statistics (track_running_stats=False)")
    mean, var = ctx.array(p["running_mean"]), ctx.array(p["running_var"])
    bottom = ctx.bottom(p["input"])
    affine = p["weight"] is not None or p["bias"] is not None
    bn_top = ctx.tmp("bn") if affine else ctx.top
    layers = [ctx.layer("BatchNorm", [bottom], [bn_top], params={"use_global_stats": True, "eps": float(p["eps"])},
                        blobs=[mean, var, np.ones(1, np.float32)])]
    if affine:
        c = mean.shape[0]
        gamma = ctx.array(p["weight"]) if p["weight"] is not None else np.ones(c, np.float32)
        beta = ctx.array(p["bias"]) if p["bias"] is not None else np.zeros(c, np.float32)
        layers.append(ctx.layer("Scale", [bn_top], params={"bias_term": True}, blobs=[gamma, beta]))
    return layers
