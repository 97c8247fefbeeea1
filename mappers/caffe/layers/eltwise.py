"""Elementwise arithmetic with torch broadcasting: every op is one call of ``broadcast_combine``."""
from __future__ import annotations

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions import broadcast_combine, is_activation, power_layer, shape_of, uniform_value
from tracecap.mappers.caffe.registry import register


def _alpha(ctx, p):
    alpha = p.get("alpha", 1)
    if alpha is None:
        return 1.0
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        ctx.unsupported(f"alpha={alpha!r} is not a number")
    return float(alpha)


@register("add", "sub")
def add_sub(node, ctx):
    """input ± alpha·other, any broadcast: Eltwise SUM (coeff), Power, Scale, or repeats + Eltwise."""
    p = node.params
    sign = -1.0 if node.op == "sub" else 1.0
    return broadcast_combine(ctx, "add", p["input"], p["other"], coeffs=(1.0, sign * _alpha(ctx, p)))


@register("rsub")
def rsub(node, ctx):
    """other - alpha·input (``1 - x``, ``c - x``), any broadcast."""
    p = node.params
    return broadcast_combine(ctx, "add", p["other"], p["input"], coeffs=(1.0, -_alpha(ctx, p)))


@register("mul")
def mul(node, ctx):
    """input · other, any broadcast: Eltwise PROD, two-bottom Scale (SE gates), Power, Scale blob."""
    return broadcast_combine(ctx, "mul", node.params["input"], node.params["other"])


@register("maximum", "minimum")
def maximum(node, ctx):
    """Elementwise max/min, any broadcast: Eltwise MAX (min as -max(-a, -b)); clamps for a scalar."""
    kind = "max" if node.op == "maximum" else "min"
    return broadcast_combine(ctx, kind, node.params["input"], node.params["other"])


@register("div")
def div(node, ctx):
    """input / other: times 1/other for a constant, Power(-1) then the product for a tensor."""
    p = node.params
    if p.get("rounding_mode") is not None:
        ctx.unsupported(f"div(rounding_mode={p['rounding_mode']!r})")
    a, b = p["input"], p["other"]
    if not is_activation(b):
        s = uniform_value(b)
        if s == 0.0:
            ctx.unsupported("division by a zero constant (inf/nan in torch) has no finite Caffe weight")
        if s is not None:
            return broadcast_combine(ctx, "mul", a, 1.0 / s)
        if not (isinstance(b, Blob) and b.value is not None):
            ctx.unsupported(f"division by {type(b).__name__}")
        recip = Blob(b.name, "const", b.shape, b.dtype, value=1.0 / b.value.double())
        return broadcast_combine(ctx, "mul", a, recip)
    sa = uniform_value(a)
    if sa not in (None, 0.0) and shape_of(b) == ctx.out_shape():
        # s / x == (x / s) ** -1: one layer (OpenCV mis-fuses a Power(-1) followed by a scaling Power)
        return [power_layer(ctx, ctx.bottom(b), power=-1.0, scale=1.0 / sa)]
    inv = ctx.tmp("reciprocal")
    return [power_layer(ctx, ctx.bottom(b), power=-1.0, top=inv)] + broadcast_combine(
        ctx, "mul", a, Blob(inv, "activation", shape_of(b)))
