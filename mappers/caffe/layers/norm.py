"""Normalization: batch norm, instance/group/layer norm, L2 (``F.normalize``) and local response norm.

MVN is not used for the variance: Caffe divides by sqrt(var) + eps and OpenCV by sqrt(var + eps)
(measured), PyTorch by sqrt(var + eps). ``constructions.normalize_rows`` centres with MVN (exact in
both), and builds 1/sqrt(var + eps) from Power and Pooling.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions import (affine, as_view, crop, integer, normalize_rows, number, power_layer,
                                                  prod, reshape_layer, round_mode, spread_rows, sum_rows)
from tracecap.mappers.caffe.registry import register


def batchnorm_layers(ctx, bottom, mean, var, eps, weight, bias, top):
    """BatchNorm with the running statistics (scale factor 1), then Scale for the affine part."""
    c = ctx.in_shape()[1] if len(ctx.in_shape()) > 1 else 0
    if mean.size != c or var.size != c:
        ctx.unsupported(f"running statistics of {mean.size}/{var.size} values for {c} channels")
    affine_part = weight is not None or bias is not None
    bn_top = ctx.tmp("bn") if affine_part else top
    layers = [ctx.layer("BatchNorm", [bottom], [bn_top], name=bn_top,
                        params={"use_global_stats": True, "eps": float(eps)},
                        blobs=[mean, var, np.ones(1, np.float32)])]
    if affine_part:
        bias = bias if bias is not None else Blob("zeros", "const", (c,), value=torch.zeros(c))
        layers += affine(ctx, bn_top, 1, weight, bias, (c,), top)
    return layers


@register("batch_norm")
def batch_norm(node, ctx):
    p = node.params
    if p["training"]:
        ctx.unsupported("batch_norm in training mode normalises with batch statistics; call model.eval()")
    if p["running_mean"] is None or p["running_var"] is None:
        ctx.unsupported("batch_norm without running statistics (track_running_stats=False)")
    return batchnorm_layers(ctx, ctx.bottom(p["input"]), ctx.array(p["running_mean"]), ctx.array(p["running_var"]),
                            number(p["eps"], "eps"), p["weight"], p["bias"], ctx.top)


def _per_row_norm(ctx, node, view, weight_axis, weight_shape):
    """Normalize the rows of ``view`` ((A, B, K, 1), or (A, B, H, W) with K = H×W), back to the input's
    shape, then the affine Scale."""
    p = node.params
    shape = ctx.in_shape()
    layers, x = as_view(ctx, ctx.bottom(p["input"]), shape, view)
    has_affine = p["weight"] is not None or p["bias"] is not None
    back = tuple(view) != tuple(shape)
    normed = ctx.tmp("normalized") if back or has_affine else ctx.top
    layers += normalize_rows(ctx, x, view, number(p["eps"], "eps"), normed)
    if back:
        shaped = ctx.tmp("unflattened") if has_affine else ctx.top
        layers.append(reshape_layer(ctx, normed, shape, top=shaped))
        normed = shaped
    if has_affine:
        layers += affine(ctx, normed, weight_axis, p["weight"], p["bias"], weight_shape, ctx.top)
    return layers


@register("instance_norm")
def instance_norm(node, ctx):
    """Per sample and channel over the spatial dims; with running stats used (eval, track_running_stats)
    it is a batch norm."""
    p = node.params
    shape = ctx.in_shape()
    if len(shape) < 3:
        ctx.unsupported(f"instance_norm of a {len(shape)}-D tensor")
    if not p["use_input_stats"]:
        if p["running_mean"] is None or p["running_var"] is None:
            ctx.unsupported("instance_norm(use_input_stats=False) without running statistics")
        return batchnorm_layers(ctx, ctx.bottom(p["input"]), ctx.array(p["running_mean"]),
                                ctx.array(p["running_var"]), number(p["eps"], "eps"), p["weight"], p["bias"],
                                ctx.top)
    n, c = shape[:2]
    view = tuple(shape) if len(shape) == 4 else (n, c, prod(shape[2:]), 1)   # MVN and pooling take N×C×H×W
    return _per_row_norm(ctx, node, view, 1, (c,))


@register("group_norm")
def group_norm(node, ctx):
    shape = ctx.in_shape()
    groups = integer(node.params["num_groups"], "num_groups")
    if len(shape) < 2 or groups <= 0 or shape[1] % groups:
        ctx.unsupported(f"group_norm with {groups} groups of {shape}")
    n, c = shape[:2]
    return _per_row_norm(ctx, node, (n, groups, prod(shape[1:]) // groups, 1), 1, (c,))


@register("layer_norm")
def layer_norm(node, ctx):
    shape = ctx.in_shape()
    ns = node.params["normalized_shape"]
    trailing = tuple(integer(d, "normalized_shape") for d in (ns if isinstance(ns, (list, tuple)) else [ns]))
    k = len(trailing)
    if not 0 < k <= len(shape) or tuple(shape[len(shape) - k:]) != trailing:
        ctx.unsupported(f"layer_norm over {trailing} of {shape}")
    outer = prod(shape[:len(shape) - k])
    view = tuple(shape) if len(shape) == 4 and k == 2 else (outer, 1, prod(trailing), 1)   # rows N×C, K = H×W
    return _per_row_norm(ctx, node, view, len(shape) - k, trailing)


@register("normalize")
def normalize(node, ctx):
    """x / max(||x||_p, eps) over ``dim``, with max(s^(1/p), eps) = max(s, eps^p)^(1/p) built as
    (eps^p + relu(s - eps^p))^(-1/p); the reciprocal norm is spread over the dim by a ones Convolution."""
    p = node.params
    shape = ctx.in_shape()
    order, eps = number(p["p"], "p"), number(p["eps"], "eps")
    if not (math.isfinite(order) and order > 0):
        ctx.unsupported(f"normalize with p={order:g} (only finite p > 0)")
    floor = eps ** order
    if not floor >= float(np.finfo(np.float32).tiny) or floor > float(np.finfo(np.float32).max):
        ctx.unsupported(f"normalize: eps**p = {floor:g} is not a normal float32 (eps={eps:g}, p={order:g})")
    dim = integer(p["dim"], "dim")
    dim = dim + len(shape) if dim < 0 else dim
    if not 0 <= dim < len(shape):
        ctx.unsupported(f"normalize over dim {p['dim']} of {shape}")
    outer, rows, inner = prod(shape[:dim]), shape[dim], prod(shape[dim + 1:])
    column = (outer, rows, inner, 1) if not (len(shape) == 4 and dim == 1) else tuple(shape)
    layers, x = as_view(ctx, ctx.bottom(p["input"]), shape, column)
    powered = ctx.tmp("powered")
    if order == 2.0:
        layers.append(power_layer(ctx, x, power=2.0, top=powered))
    else:
        magnitude = ctx.tmp("abs")
        layers += [ctx.layer("AbsVal", [x], [magnitude]), power_layer(ctx, magnitude, power=order, top=powered)]
    total, shifted, clipped, inv, spread = (ctx.tmp(w) for w in ("sum", "shifted", "clipped", "inverse", "spread"))
    new, total_shape = sum_rows(ctx, powered, column, 1, 2, total)
    layers += new
    layers += [power_layer(ctx, total, shift=-floor, top=shifted), ctx.layer("ReLU", [shifted], [clipped]),
               power_layer(ctx, clipped, shift=floor, power=-1.0 / order, top=inv)]
    new, spread_shape = spread_rows(ctx, inv, total_shape, outer, rows, inner, spread)
    layers += new
    new, spread_view = as_view(ctx, spread, spread_shape, column, "spread_view")
    layers += new
    out = ctx.tmp("normalized") if column != tuple(shape) else ctx.top
    layers.append(ctx.layer("Eltwise", [x, spread_view], [out], params={"operation": "PROD"}))
    if out != ctx.top:
        layers.append(reshape_layer(ctx, out, shape, top=ctx.top))
    return layers


@register("local_response_norm")
def local_response_norm(node, ctx):
    """x / (k + alpha/n · sum of x² over the n channels around)^beta, PyTorch's window
    [c - n//2, c + (n-1)//2] with zeros past the borders.

    Odd n with k > 0: the LRN layer (the same window) with alpha/k and k = 1, times k^-beta (OpenCV
    ignores LRN's k; measured). Even n, or k <= 0: Power 2, AVE pooling over the channels padded by n//2
    on both sides (the padding counts, as PyTorch's zeros do), the first C windows kept by a Slice,
    Power(k + alpha·avg, -beta) and Eltwise PROD.
    """
    p = node.params
    shape = ctx.in_shape()
    size, alpha, beta, k = (integer(p["size"], "size"), number(p["alpha"], "alpha"), number(p["beta"], "beta"),
                            number(p["k"], "k"))
    if len(shape) < 3 or size < 1:
        ctx.unsupported(f"local_response_norm of a {len(shape)}-D tensor")
    n, c = shape[:2]
    rest = prod(shape[2:])
    view = (n, c, rest, 1) if len(shape) != 4 else tuple(shape)
    layers, x = as_view(ctx, ctx.bottom(p["input"]), shape, view)
    back = view != tuple(shape)
    out = ctx.tmp("lrn") if back else ctx.top
    if size % 2 == 1 and k > 0:
        lrn = ctx.tmp("lrn1") if k != 1.0 else out
        params = {"local_size": size, "alpha": alpha / k, "beta": beta, "k": 1.0}
        layers.append(ctx.layer("LRN", [x], [lrn], name=lrn, params=params))
        if k != 1.0:
            layers.append(power_layer(ctx, lrn, scale=k ** -beta, top=out))
    else:
        squared, windows, avg, denom = ctx.tmp("squared"), ctx.tmp("windows"), ctx.tmp("window_avg"), ctx.tmp("inv")
        layers.append(power_layer(ctx, x, power=2.0, top=squared))
        new, sq_rows = as_view(ctx, squared, view, (n, 1, c, rest), "channel_rows")
        layers += new
        pad = size // 2
        pooled = windows if size % 2 == 0 else avg
        layers.append(ctx.layer("Pooling", [sq_rows], [pooled], params={
            "pool": "AVE", "kernel_h": size, "kernel_w": 1, "pad_h": pad, "pad_w": 0, **round_mode(ctx, False)}))
        if size % 2 == 0:   # n + 1 windows: the last one starts past PyTorch's
            layers += crop(ctx, windows, (n, 1, c + 1, rest), [(2, 0, c)], avg)
        new, avg_view = as_view(ctx, avg, (n, 1, c, rest), view, "window_avg_view")
        layers += new
        layers += [power_layer(ctx, avg_view, power=-beta, scale=alpha, shift=k, top=denom),
                   ctx.layer("Eltwise", [x, denom], [out], params={"operation": "PROD"})]
    if back:
        layers.append(reshape_layer(ctx, out, shape, top=ctx.top))
    return layers
