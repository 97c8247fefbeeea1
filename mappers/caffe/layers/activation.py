"""Pointwise activations (ReLU family, clamps, sigmoid/tanh, softmax) and eval-mode dropout."""
from __future__ import annotations

import math

import numpy as np

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions import clip, number, power_layer
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


def softplus_exact_above(beta, threshold):
    """Whether log(1 + exp(beta·x)) / beta rounds to x in float32 wherever PyTorch switches to the identity
    (beta·x > threshold): the gap there, log1p(exp(-threshold)) / beta, is largest at the switch and
    must stay below half a unit in the last place of x = threshold / beta."""
    if not (beta > 0 and math.isfinite(threshold)):
        return False
    x0 = np.float32(threshold / beta)
    if x0 <= 0:
        return False
    gap = math.log1p(math.exp(-threshold)) / beta
    return gap <= 0.5 * float(np.spacing(x0))


@register("softplus")
def softplus(node, ctx):
    """BNLL is log(1 + exp(x)); beta scales around it. PyTorch's switch to the identity above
    ``threshold`` is only taken where it makes no float32 difference (the default 20 is)."""
    beta, threshold = number(node.params["beta"], "beta"), number(node.params["threshold"], "threshold")
    if not softplus_exact_above(beta, threshold):
        ctx.unsupported(f"softplus(beta={beta:g}, threshold={threshold:g}): above the threshold PyTorch returns x, "
                        f"log(1 + exp(beta*x))/beta differs from it by up to "
                        f"{math.log1p(math.exp(-threshold)) / beta:.3g} there (visible in float32)"
                        if beta > 0 else f"softplus with beta={beta:g} <= 0")
    x = ctx.bottom(node.params["input"])
    if beta == 1.0:
        return [ctx.layer("BNLL", [x])]
    scaled, bnll = ctx.tmp("scaled"), ctx.tmp("bnll")
    return [power_layer(ctx, x, scale=beta, top=scaled), ctx.layer("BNLL", [scaled], [bnll]),
            power_layer(ctx, bnll, scale=1.0 / beta)]


@register("mish")
def mish(node, ctx):
    """x * tanh(softplus(x)): BNLL, TanH, Eltwise PROD."""
    x = ctx.bottom(node.params["input"])
    bnll, tanh_ = ctx.tmp("softplus"), ctx.tmp("tanh")
    return [ctx.layer("BNLL", [x], [bnll]), ctx.layer("TanH", [bnll], [tanh_]),
            ctx.layer("Eltwise", [x, tanh_], params={"operation": "PROD"})]


@register("log_sigmoid")
def log_sigmoid(node, ctx):
    """log(sigmoid(x)) = -softplus(-x): no underflow to log(0) for very negative x, unlike Sigmoid + Log."""
    x = ctx.bottom(node.params["input"])
    flipped, bnll = ctx.tmp("negated"), ctx.tmp("softplus")
    return [power_layer(ctx, x, scale=-1.0, top=flipped), ctx.layer("BNLL", [flipped], [bnll]),
            power_layer(ctx, bnll, scale=-1.0)]


@register("gelu")
def gelu(node, ctx):
    """approximate='tanh': 0.5·x·(1 + tanh(sqrt(2/pi)·(x + 0.044715·x³))), term by term (7 layers).
    The exact (erf) form has no Caffe construction."""
    if node.params["approximate"] != "tanh":
        ctx.unsupported("gelu(approximate='none') needs erf, which has no exact construction from Caffe layers; "
                        "GELU(approximate='tanh') converts exactly")
    x = ctx.bottom(node.params["input"])
    cube, inner, scaled, tanh_, half = (ctx.tmp(w) for w in ("cube", "inner", "scaled", "tanh", "half"))
    return [power_layer(ctx, x, power=3.0, top=cube),
            ctx.layer("Eltwise", [x, cube], [inner], params={"operation": "SUM", "coeff": [1.0, 0.044715]}),
            power_layer(ctx, inner, scale=math.sqrt(2.0 / math.pi), top=scaled),
            ctx.layer("TanH", [scaled], [tanh_]),
            power_layer(ctx, tanh_, scale=0.5, shift=0.5, top=half),
            ctx.layer("Eltwise", [x, half], params={"operation": "PROD"})]


@register("threshold")
def threshold(node, ctx):
    """y = x if x > threshold else value. With value == threshold it is max(x, threshold) (a clamp);
    any other value makes a jump at the threshold, which no layer both runtimes run reproduces."""
    th, value = number(node.params["threshold"], "threshold"), number(node.params["value"], "value")
    if value != th:
        ctx.unsupported(f"threshold({th:g}, {value:g}): the jump from {value:g} to x at {th:g} needs a step "
                        f"function; Caffe's Threshold layer (a 0/1 step) is not in OpenCV")
    return clip(ctx, ctx.bottom(node.params["input"]), th, math.inf)
