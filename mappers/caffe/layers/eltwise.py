"""Elementwise arithmetic between tensors and with scalars or constants."""
from __future__ import annotations

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions import scalar_operand, is_activation, power_layer, broadcast_combine, full_shape_first
from tracecap.mappers.caffe.registry import register


@register("add", "sub")
def add_sub(node, ctx):
    p = node.params
    a, b = p["input"], p["other"]
    alpha = float(p.get("alpha", 1) or 1)
    sign = -1.0 if node.op == "sub" else 1.0
    s = scalar_operand(b)
    if s is not None and is_activation(a):
        return [power_layer(ctx, ctx.bottom(a), shift=sign * alpha * s)]
    if is_activation(a) and is_activation(b) and tuple(a.shape) == tuple(b.shape):
        coeff = sign * alpha
        params = {"operation": "SUM"}
        if coeff != 1.0:
            params["coeff"] = [1.0, coeff]
        return [ctx.layer("Eltwise", [ctx.bottom(a), ctx.bottom(b)], params=params)]
    if sign * alpha != 1.0:
        ctx.unsupported(f"{node.op} with alpha={alpha} of broadcast operands")
    x, other = full_shape_first(ctx, a, b)
    return broadcast_combine(ctx, "add", x, other)


@register("rsub")
def rsub(node, ctx):
    """other - alpha * input."""
    p = node.params
    alpha = float(p.get("alpha", 1) or 1)
    s = scalar_operand(p["other"])
    if s is not None:
        return [power_layer(ctx, ctx.bottom(p["input"]), scale=-alpha, shift=s)]
    if is_activation(p["other"]) and tuple(p["other"].shape) == tuple(p["input"].shape):
        return [ctx.layer("Eltwise", [ctx.bottom(p["input"]), ctx.bottom(p["other"])],
                          params={"operation": "SUM", "coeff": [-alpha, 1.0]})]
    ctx.unsupported("reversed subtraction of a broadcast tensor")


@register("mul")
def mul(node, ctx):
    a, b = node.params["input"], node.params["other"]
    s = scalar_operand(b) if is_activation(a) else scalar_operand(a)
    if s is not None:
        return [power_layer(ctx, ctx.bottom(a if is_activation(a) else b), scale=s)]
    x, other = full_shape_first(ctx, a, b)
    return broadcast_combine(ctx, "mul", x, other)


@register("div")
def div(node, ctx):
    p = node.params
    if p.get("rounding_mode") is not None:
        ctx.unsupported(f"div(rounding_mode={p['rounding_mode']!r})")
    a, b = p["input"], p["other"]
    s = scalar_operand(b)
    if s is not None and is_activation(a):
        return [power_layer(ctx, ctx.bottom(a), scale=1.0 / s)]
    sa = scalar_operand(a)
    if sa is not None and is_activation(b):  # s / x == (x / s) ** -1, one layer (OpenCV mis-fuses Power(-1) + Power)
        return [power_layer(ctx, ctx.bottom(b), power=-1.0, scale=1.0 / sa)]
    if is_activation(a) and isinstance(b, Blob) and b.is_constant:
        recip = Blob(b.name, "const", b.shape, b.dtype, value=1.0 / b.value.float())
        return broadcast_combine(ctx, "mul", a, recip)
    if is_activation(a) and is_activation(b) and tuple(b.shape) == ctx.out_shape():
        inv = ctx.tmp("reciprocal")
        if tuple(a.shape) != tuple(b.shape):
            ctx.unsupported("division of a broadcast numerator by a tensor")
        return [power_layer(ctx, ctx.bottom(b), power=-1.0, top=inv),
                ctx.layer("Eltwise", [ctx.bottom(a), inv], params={"operation": "PROD"})]
    if is_activation(a) and is_activation(b):
        inv = ctx.tmp("reciprocal")
        inv_blob = Blob(inv, "activation", b.shape)
        layers = [power_layer(ctx, ctx.bottom(b), power=-1.0, top=inv)]
        return layers + broadcast_combine(ctx, "mul", a, inv_blob)
    ctx.unsupported("division of these operands")


@register("maximum")
def maximum(node, ctx):
    a, b = node.params["input"], node.params["other"]
    if not (is_activation(a) and is_activation(b) and tuple(a.shape) == tuple(b.shape)):
        ctx.unsupported("maximum of broadcast or constant operands")
    return [ctx.layer("Eltwise", [ctx.bottom(a), ctx.bottom(b)], params={"operation": "MAX"})]
