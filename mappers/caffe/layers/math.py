"""Elementwise math: powers and roots (Power), abs, exp, log, neg; erf refused.

Power computes (shift + scale·x)^power with C's pow in both runtimes: negative bases give NaN for
non-integer exponents and signed results for integer ones, as torch.pow does (measured on both).
One IEEE corner differs: at x = -0.0, negative exponents give +inf in the runtimes where torch gives
-inf (OpenCV for every negative exponent, Caffe for non-integer ones).
"""
from __future__ import annotations

import math

from tracecap.mappers.caffe.constructions import is_activation, power_layer, scalar_operand
from tracecap.mappers.caffe.registry import register

_POWERS = {"sqrt": 0.5, "rsqrt": -0.5, "reciprocal": -1.0, "square": 2.0}


@register("pow")
def pow_(node, ctx):
    base, exponent = node.params["input"], node.params["exponent"]
    e = scalar_operand(exponent)
    if is_activation(base) and e is not None:
        return [power_layer(ctx, ctx.bottom(base), power=e)]
    b = scalar_operand(base)
    if b is not None and is_activation(exponent):
        if b <= 0:
            ctx.unsupported(f"{b} ** x: Caffe's Exp layer takes a positive base")
        return [ctx.layer("Exp", [ctx.bottom(exponent)], params={"base": b})]   # b ** x
    ctx.unsupported("pow with a tensor exponent: exp(y * log(x)) differs from torch.pow for negative bases")


@register("sqrt", "rsqrt", "reciprocal", "square")
def power_of(node, ctx):
    return [power_layer(ctx, ctx.bottom(node.params["input"]), power=_POWERS[node.op])]


@register("neg")
def neg(node, ctx):
    return [power_layer(ctx, ctx.bottom(node.params["input"]), scale=-1.0)]


@register("abs")
def abs_(node, ctx):
    return [ctx.layer("AbsVal", [ctx.bottom(node.params["input"])])]


@register("exp")
def exp(node, ctx):
    return [ctx.layer("Exp", [ctx.bottom(node.params["input"])])]


@register("log", "log2", "log10")
def log(node, ctx):
    """Natural Log, then a Power scale for other bases: OpenCV's Log ignores ``base`` (measured)."""
    x = ctx.bottom(node.params["input"])
    if node.op == "log":
        return [ctx.layer("Log", [x])]
    natural = ctx.tmp("ln")
    return [ctx.layer("Log", [x], [natural]),
            power_layer(ctx, natural, scale=1.0 / math.log({"log2": 2.0, "log10": 10.0}[node.op]))]


@register("erf")
def erf(node, ctx):
    ctx.unsupported("no Caffe mapping for `erf`: no Caffe layer computes it, and no exact construction from "
                    "the layers both runtimes run exists")


@register("where")
def where(node, ctx):
    ctx.unsupported("torch.where selects by a mask, which Caffe has no layer for; only where(x > 0, x, c * x) "
                    "(a leaky ReLU) and where(x > s, x, s) / where(x < s, x, s) (clamps) convert "
                    "(passes.fold_compare_select)")


@register("gt", "ge", "lt", "le", "eq", "ne")
def comparison(node, ctx):
    ctx.unsupported(f"`{node.op}` makes a boolean tensor, which Caffe has no layer for")
