"""Padding: ``F.pad`` in every mode, ``nn.ZeroPad2d``/``ConstantPad*d``/``ReflectionPad*d``/``ReplicationPad*d``.

A symmetric zero pad read only by convolutions never gets here: ``passes.fold_pad_into_conv`` makes it
their padding. Constant pads: negative amounts crop (Slice); positive ones are one Convolution on a 4-D
view (``constructions.zero_pad``: asymmetric borders and channel pads included); a non-zero value adds
a constant border map (Scale). ``reflect``/``replicate``/``circular`` gather each padded axis from
pieces of the input (Slice + Concat): copies only, so exact for every value.
"""
from __future__ import annotations

import numpy as np

from tracecap.mappers.caffe.constructions import constant_map, crop, gather_slices, prod, reshape_layer, zero_pad
from tracecap.mappers.caffe.registry import register


def _sides(ctx, shape, pads):
    """{axis: (before, after)} of the non-zero amounts; F.pad lists them from the last axis backwards."""
    if len(pads) % 2 or len(pads) // 2 > len(shape):
        ctx.unsupported(f"pad {tuple(pads)} for a {len(shape)}-D tensor")
    return {len(shape) - 1 - k: (pads[2 * k], pads[2 * k + 1]) for k in range(len(pads) // 2)
            if (pads[2 * k], pads[2 * k + 1]) != (0, 0)}


def _source_index(mode, size, before, after):
    """For each output position along one axis, the input position it copies. torch crops the negative
    amounts first and pads what is left (circular wraps around the cropped part)."""
    lo, hi = max(0, -before), size - max(0, -after)
    kept, before, after = hi - lo, max(before, 0), max(after, 0)
    out = []
    for i in range(kept + before + after):
        k = i - before
        if mode == "reflect":
            k = -k if k < 0 else (2 * (kept - 1) - k if k >= kept else k)
        elif mode == "replicate":
            k = min(max(k, 0), kept - 1)
        else:  # circular
            k %= kept
        out.append(lo + k)
    return out


@register("pad")
def pad(node, ctx):
    p = node.params
    shape = ctx.in_shape()
    mode = p["mode"]
    sides = _sides(ctx, shape, [int(v) for v in p["pad"]])
    x = ctx.bottom(p["input"])
    if 0 in ctx.out_shape():
        ctx.unsupported(f"pad to the empty shape {ctx.out_shape()}")
    if not sides:
        return [reshape_layer(ctx, x, shape, top=ctx.top)]
    if mode == "constant":
        return _constant_pad(ctx, x, shape, sides, float(p["value"] or 0.0))
    if mode not in ("reflect", "replicate", "circular"):
        ctx.unsupported(f"pad mode {mode!r}")
    gathers = {}
    for axis, (before, after) in sides.items():
        if shape[axis] - max(0, -before) - max(0, -after) < 1:
            ctx.unsupported(f"{mode} pad {(before, after)} crops an axis of size {shape[axis]} to nothing")
        index = _source_index(mode, shape[axis], before, after)
        if any(not 0 <= k < shape[axis] for k in index):
            ctx.unsupported(f"{mode} pad {(before, after)} of an axis of size {shape[axis]}")
        if index != list(range(shape[axis])):
            gathers[axis] = index
    if not gathers:
        return [reshape_layer(ctx, x, shape, top=ctx.top)]
    layers, cur = [], x
    axes = sorted(gathers, reverse=True)
    for n, axis in enumerate(axes):
        index = gathers[axis]
        out = ctx.top if n == len(axes) - 1 else ctx.tmp(f"pad{axis}")
        layers += gather_slices(ctx, cur, shape, axis, index, out)
        cur, shape = out, shape[:axis] + (len(index),) + shape[axis + 1:]
    return layers


def _constant_pad(ctx, x, shape, sides, value):
    """Crop the negative amounts, pad the positive ones with zeros, then add ``value`` on the border."""
    layers, out_shape = [], ctx.out_shape()
    cuts = [(axis, max(0, -a), shape[axis] - max(0, -b)) for axis, (a, b) in sides.items() if min(a, b) < 0]
    for axis, lo, hi in cuts:
        if hi <= lo:
            ctx.unsupported(f"constant pad {sides[axis]} crops axis {axis} of size {shape[axis]} to nothing")
    grow = {axis: (max(a, 0), max(b, 0)) for axis, (a, b) in sides.items() if max(a, b) > 0}
    if cuts:
        cropped = ctx.top if not grow else ctx.tmp("crop")
        layers += crop(ctx, x, shape, cuts, cropped)
        x = cropped
        for axis, lo, hi in cuts:
            shape = shape[:axis] + (hi - lo,) + shape[axis + 1:]
    if not grow:
        return layers
    # a 4-D view whose axes 1..3 are the input's last three (leading ones added, leading dims merged)
    lead = len(shape) - 3
    if any(axis < lead for axis in grow):
        ctx.unsupported(f"constant pad of axis {min(grow)} of a {len(shape)}-D tensor: only the last three axes "
                        f"pad (they become a Convolution's channels and spatial axes; the batch axis cannot)")
    view = (prod(shape[:lead]),) + tuple(shape[lead:]) if lead >= 1 else (1,) * (1 - lead) + tuple(shape)
    shift = 4 - len(shape)
    view_pads = [grow.get(axis - shift, (0, 0)) for axis in (1, 2, 3)]
    view_out = (view[0],) + tuple(view[k] + sum(view_pads[k - 1]) for k in (1, 2, 3))
    src = x
    if view != shape:
        src = ctx.tmp("view")
        layers.append(reshape_layer(ctx, x, view, top=src))
    reshaped_back = view_out != out_shape
    padded = ctx.tmp("zero_pad") if (reshaped_back or value != 0.0) else ctx.top
    layers += zero_pad(ctx, src, view, view_pads, padded)
    if value != 0.0:
        border = np.full(view_out[1:], value)
        border[tuple(slice(a, a + view[k + 1]) for k, (a, _) in enumerate(view_pads))] = 0.0
        filled = ctx.tmp("filled") if reshaped_back else ctx.top
        layers += constant_map(ctx, padded, view_out, shift=border, top=filled, guard=True)
        padded = filled
    if reshaped_back:
        layers.append(reshape_layer(ctx, padded, out_shape, top=ctx.top))
    return layers
