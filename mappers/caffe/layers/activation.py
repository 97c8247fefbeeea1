"""Pointwise activations (ReLU family, clamps, sigmoid/tanh, softmax) and eval-mode dropout."""
from __future__ import annotations

import math

import numpy as np

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions import clip, power_layer
from tracecap.mappers.caffe.registry import norm_axis, register


@register("relu")
def relu(node, ctx):
    return [ctx.layer("ReLU", [ctx.bottom(node.params["input"])])]


@register("leaky_relu")
def leaky_relu(node, ctx):
    slope = float(node.params["negative_slope"])
    return [ctx.layer("ReLU", [ctx.bottom(node.params["input"])], params={"negative_slope": slope})]


@register("hardsigmoid")
def hardsigmoid(node, ctx):
    """relu6(x + 3) / 6: runtimes' HardSigmoid layers default to other slopes (OpenCV: 0.2)."""
    x, shifted, clipped = ctx.bottom(node.params["input"]), ctx.tmp("shift"), ctx.tmp("relu6")
    return ([power_layer(ctx, x, shift=3.0, top=shifted)] + clip(ctx, shifted, 0.0, 6.0, top=clipped)
            + [power_layer(ctx, clipped, scale=1.0 / 6.0)])


@register("relu6")
def relu6(node, ctx):
    return clip(ctx, ctx.bottom(node.params["input"]), 0.0, 6.0)


@register("hardtanh")
def hardtanh(node, ctx):
    return clip(ctx, ctx.bottom(node.params["input"]), float(node.params["min_val"]), float(node.params["max_val"]))


@register("clamp")
def clamp(node, ctx):
    lo, hi = node.params["min"], node.params["max"]
    if isinstance(lo, Blob) or isinstance(hi, Blob):
        ctx.unsupported("clamp with tensor bounds")
    return clip(ctx, ctx.bottom(node.params["input"]), -math.inf if lo is None else float(lo),
                 math.inf if hi is None else float(hi))


@register("elu")
def elu(node, ctx):
    return [ctx.layer("ELU", [ctx.bottom(node.params["input"])], params={"alpha": float(node.params["alpha"])})]


@register("prelu")
def prelu(node, ctx):
    weight = ctx.array(node.params["weight"]).reshape(-1)
    if weight.size == 1:
        # A shared slope is written per channel: Caffe wants a channel_shared slope as a 0-d blob,
        # which OpenCV cannot read, and refuses shape (1,). Repeating it is exact in both.
        weight = np.repeat(weight, ctx.in_shape()[1] if len(ctx.in_shape()) > 1 else 1)
    return [ctx.layer("PReLU", [ctx.bottom(node.params["input"])], blobs=[weight])]


@register("sigmoid")
def sigmoid(node, ctx):
    return [ctx.layer("Sigmoid", [ctx.bottom(node.params["input"])])]


@register("tanh")
def tanh(node, ctx):
    return [ctx.layer("TanH", [ctx.bottom(node.params["input"])])]


@register("silu")
def silu(node, ctx):
    """x * sigmoid(x): exact in every dialect, unlike Swish which only some have."""
    x = ctx.bottom(node.params["input"])
    s = ctx.tmp("sigmoid")
    return [ctx.layer("Sigmoid", [x], [s]),
            ctx.layer("Eltwise", [x, s], params={"operation": "PROD"})]


@register("hardswish")
def hardswish(node, ctx):
    if not ctx.has_layer("HardSwish"):
        ctx.unsupported(f"the {ctx.dialect} dialect has no HardSwish layer")
    return [ctx.layer("HardSwish", [ctx.bottom(node.params["input"])])]


@register("softmax", "log_softmax")
def softmax(node, ctx):
    ndim = len(ctx.in_shape())
    axis = norm_axis(node.params["dim"], ndim)
    x = ctx.bottom(node.params["input"])
    if node.op == "softmax":
        return [ctx.layer("Softmax", [x], params={"axis": axis})]
    s = ctx.tmp("softmax")
    return [ctx.layer("Softmax", [x], [s], params={"axis": axis}), ctx.layer("Log", [s])]


@register("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")
def dropout(node, ctx):
    """Eval-mode dropout never reaches the mapper (passes remove it); training-mode dropout is random."""
    ctx.unsupported("dropout with training=True is random at inference; call model.eval() (or pass "
                    "training=self.training) before capturing")
