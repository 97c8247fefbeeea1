"""Indexing and repeats: slices with steps, constant index lists, flips, rolls, writes into slices,
expand and tile - all exact copies made of Slice, Concat, Reshape and ones-weight (De)Convolutions.

A selection is, per axis, the list of positions kept; contiguous ones become one crop (Slice), the
others a gather (``constructions.gather_axis``). Indices computed from the input (data-dependent
gathers) are refused: Caffe has no gather layer.
"""
from __future__ import annotations

import numpy as np
import torch

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions import (
    assemble, constant_over, crop, expand_layers, gather_axis, is_activation, padded, reshape_layer, shape_of,
)
from tracecap.mappers.caffe.registry import norm_axis, register


# ---- reading the index ----------------------------------------------------------------------------
def _positions(ctx, item, size):
    """Positions along an axis of ``size`` selected by a list, a bool mask or a constant index tensor."""
    if isinstance(item, Blob):
        if not item.is_constant:
            ctx.unsupported(f"indexing with tensor {item.name}, computed from the input: a data-dependent "
                            f"gather has no Caffe layer")
        value = item.value
        if value.dtype.is_floating_point or value.is_complex():
            ctx.unsupported(f"an index tensor of dtype {value.dtype}")
        if value.dtype == torch.bool:
            if value.dim() != 1:
                ctx.unsupported("a boolean mask over several dims")
            return [int(i) for i in value.nonzero().reshape(-1)], (int(value.sum()),)
        return [int(i) for i in value.reshape(-1)], tuple(value.shape)
    flat = list(item)
    if flat and all(isinstance(i, bool) for i in flat):
        return [k for k, keep in enumerate(flat) if keep], (sum(flat),)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in flat):
        ctx.unsupported("a nested or mixed index list")
    return flat, (len(flat),)


def _wrap(ctx, positions, size):
    out = []
    for p in positions:
        if not -size <= p < size:
            ctx.unsupported(f"index {p} out of range for size {size}")
        out.append(p + size if p < 0 else p)
    return out


def read_index(ctx, index, shape):
    """(selections {axis: positions}, dropped axes, advanced axis) of a basic-or-one-list index."""
    index = index if isinstance(index, tuple) else (index,)
    if sum(1 for i in index if i is Ellipsis) > 1:
        ctx.unsupported("more than one Ellipsis")
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    if used > len(shape):
        ctx.unsupported(f"{used} indices for a {len(shape)}-D tensor")
    if Ellipsis in index:
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(shape) - used) + index[k + 1:]
    selections, dropped, advanced, axis = {}, [], [], 0
    for item in index:
        if item is None:
            continue
        size = shape[axis]
        if isinstance(item, bool):
            ctx.unsupported("a boolean scalar index")
        if isinstance(item, int):
            selections[axis] = _wrap(ctx, [item], size)
            dropped.append(axis)
        elif isinstance(item, slice):
            if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in
                       (item.start, item.stop, item.step)):
                ctx.unsupported(f"slice bounds {item} that are not integers")
            selections[axis] = list(range(*item.indices(size)))
        elif isinstance(item, (list, tuple, Blob)):
            pos, _ = _positions(ctx, item, size)
            selections[axis] = _wrap(ctx, pos, size)
            advanced.append(axis)
        else:
            ctx.unsupported(f"an index of type {type(item).__name__}")
        axis += 1
    if len(advanced) > 1:
        ctx.unsupported("more than one list/tensor index (a pointwise gather)")
    group = sorted(dropped + advanced)
    if advanced and dropped and group != list(range(group[0], group[-1] + 1)):
        ctx.unsupported("integer and list indices apart from each other (torch moves the indexed dims first)")
    for ax, pos in selections.items():
        if not pos:
            ctx.unsupported(f"an empty selection along dim {ax}")
    return {ax: pos for ax, pos in selections.items() if pos != list(range(shape[ax]))}, dropped, advanced


def select(ctx, bottom, shape, selections, top):
    """Layers keeping ``selections[axis]`` along each axis; (layers, shape kept). One crop for every
    contiguous selection, one gather per other axis; the last layer writes ``top``."""
    layers, cur, name = [], list(shape), bottom
    cuts = [(ax, pos[0], pos[-1] + 1) for ax, pos in sorted(selections.items())
            if pos == list(range(pos[0], pos[-1] + 1))]
    gathers = [(ax, pos) for ax, pos in sorted(selections.items()) if (ax, pos[0], pos[-1] + 1) not in cuts]
    steps = (1 if cuts else 0) + len(gathers)
    if cuts:
        steps -= 1
        out = top if not steps else ctx.tmp("part")
        layers += crop(ctx, name, tuple(cur), cuts, out)
        for ax, lo, hi in cuts:
            cur[ax] = hi - lo
        name = out
    for ax, pos in gathers:
        steps -= 1
        out = top if not steps else ctx.tmp("gather")
        layers += gather_axis(ctx, name, tuple(cur), ax, pos, out)
        cur[ax] = len(pos)
        name = out
    return layers, tuple(cur)


def _select_then_reshape(ctx, selections):
    """The node's input with ``selections`` kept, reshaped to the node's output shape where they differ."""
    shape, out = ctx.in_shape(), ctx.out_shape()
    x = ctx.bottom(ctx.node.params["input"])
    if not selections:
        return [reshape_layer(ctx, x, out, top=ctx.top)]
    kept = tuple(len(selections[d]) if d in selections else n for d, n in enumerate(shape))
    name = ctx.top if kept == out else ctx.tmp("part")
    layers, _ = select(ctx, x, shape, selections, name)
    return layers if name == ctx.top else layers + [reshape_layer(ctx, name, out, top=ctx.top)]


# ---- mappers ------------------------------------------------------------------------------------
@register("getitem")
def getitem(node, ctx):
    """``x[...]``: slices with any step, ints, None, ``...`` and one list/constant-tensor index (channel
    permutations): Slice crops, Slice + Concat gathers (Reshape + Slice for long strides), Reshape."""
    selections, _, _ = read_index(ctx, node.params["index"], ctx.in_shape())
    return _select_then_reshape(ctx, selections)


@register("index_select")
def index_select(node, ctx):
    """``x.index_select(dim, idx)`` with a constant ``idx``: Slice + Concat."""
    p = node.params
    shape = ctx.in_shape()
    dim = norm_axis(p["dim"], len(shape))
    if not isinstance(p["index"], Blob):
        ctx.unsupported("index_select without an index tensor")
    pos, _ = _positions(ctx, p["index"], shape[dim])
    pos = _wrap(ctx, pos, shape[dim])
    return _select_then_reshape(ctx, {dim: pos} if pos != list(range(shape[dim])) else {})


@register("narrow", "select")
def narrow(node, ctx):
    """``x.narrow(dim, start, length)`` / ``x.select(dim, i)``: a Slice (+ Reshape)."""
    p = node.params
    shape = ctx.in_shape()
    dim = norm_axis(p["dim"], len(shape))
    start = p["start"] if node.op == "narrow" else p["index"]
    if isinstance(start, Blob) and start.is_constant and start.value is not None and start.value.numel() == 1 \
            and not start.value.dtype.is_floating_point:
        start = int(start.value.reshape(()).item())  # x.select(1, torch.tensor(2))
    if isinstance(start, Blob) or isinstance(start, bool) or not isinstance(start, int):
        ctx.unsupported(f"{node.op} at a position that is not a Python int")
    start = _wrap(ctx, [start], shape[dim])[0]
    length = p["length"] if node.op == "narrow" else 1
    pos = list(range(start, start + int(length)))
    return _select_then_reshape(ctx, {dim: pos} if pos != list(range(shape[dim])) else {})


@register("flip", "fliplr", "flipud")
def flip(node, ctx):
    """``torch.flip`` (any dims): per flipped dim one Slice into single positions and one Concat."""
    shape = ctx.in_shape()
    dims = {"fliplr": (1,), "flipud": (0,)}.get(node.op) or node.params["dims"]
    dims = {norm_axis(d, len(shape)) for d in (dims if isinstance(dims, (list, tuple)) else (dims,))}
    return _select_then_reshape(ctx, {d: list(range(shape[d] - 1, -1, -1)) for d in dims if shape[d] > 1})


@register("roll")
def roll(node, ctx):
    """``torch.roll``: per rolled dim one Slice in two and one Concat; without dims, of the flattened tensor."""
    p = node.params
    shape = ctx.in_shape()
    shifts, dims = p["shifts"], p["dims"]
    shifts = list(shifts) if isinstance(shifts, (list, tuple)) else [shifts]
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shifts):
        ctx.unsupported("roll by shifts that are not Python ints")
    if dims is None or dims == ():
        if len(shifts) != 1:
            ctx.unsupported("roll of the flattened tensor by several shifts")
        n = 1
        for d in shape:
            n *= d
        flat, rolled = ctx.tmp("flat"), ctx.tmp("rolled")
        pos = [(i - shifts[0]) % n for i in range(n)]
        if pos == list(range(n)):
            return [reshape_layer(ctx, ctx.bottom(p["input"]), shape, top=ctx.top)]
        return ([reshape_layer(ctx, ctx.bottom(p["input"]), (1, n), top=flat)]
                + gather_axis(ctx, flat, (1, n), 1, pos, rolled) + [reshape_layer(ctx, rolled, shape, top=ctx.top)])
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    if len(dims) != len(shifts):
        ctx.unsupported("roll with as many shifts as dims")
    total = {}
    for s, d in zip(shifts, dims):
        d = norm_axis(d, len(shape))
        total[d] = total.get(d, 0) + s
    selections = {d: [(i - s) % shape[d] for i in range(shape[d])] for d, s in total.items()}
    return _select_then_reshape(ctx, {d: pos for d, pos in selections.items() if pos != list(range(shape[d]))})


@register("expand", "expand_as")
def expand(node, ctx):
    """``x.expand(...)``/``expand_as``/``broadcast_to`` of an activation: repeated by a ones 1×1 Convolution
    (channels), a ones Deconvolution (H/W) or Reshape + ones Convolution (other dims): exact copies."""
    layers, _ = expand_layers(ctx, ctx.bottom(node.params["input"]), ctx.in_shape(), ctx.out_shape(), ctx.top)
    return layers


@register("repeat", "tile")
def repeat(node, ctx):
    """``x.repeat(...)``/``torch.tile`` (whole copies side by side): one Concat of the copies per repeated dim."""
    shape, out = ctx.in_shape(), ctx.out_shape()
    sizes = node.params["sizes" if node.op == "repeat" else "dims"]
    sizes = [int(k) for k in (sizes if isinstance(sizes, (list, tuple)) else (sizes,))]
    sizes = [1] * (len(shape) - len(sizes)) + sizes  # tile pads the repeats with leading 1s
    if len(sizes) < len(shape) or any(k < 1 for k in sizes):
        ctx.unsupported(f"repeats {sizes} for a {len(shape)}-D tensor")
    src = padded(shape, len(sizes))
    layers, name = [], ctx.bottom(node.params["input"])
    todo = [d for d, k in enumerate(sizes) if k > 1]
    if src != shape or not todo:
        name = ctx.top if not todo else ctx.tmp("as_nd")
        layers.append(reshape_layer(ctx, ctx.bottom(node.params["input"]), src, top=name))
    cur = list(src)
    for k, d in enumerate(todo):
        top = ctx.top if k == len(todo) - 1 else ctx.tmp("tiled")
        layers.append(ctx.layer("Concat", [name] * sizes[d], [top], params={"axis": d}))
        name, cur[d] = top, cur[d] * sizes[d]
    if tuple(cur) != out:
        ctx.unsupported(f"repeat of {shape} by {sizes} gives {tuple(cur)}, torch {out}")
    return layers


@register("setitem")
def setitem(node, ctx):
    """``x[index] = v`` (and writes through views, ``x1.add_(...)`` on a chunk): per indexed dim one Slice
    of the old value and one Concat with the new part; a constant part is laid over the slice it replaces."""
    p = node.params
    x, v, shape = p["input"], p["value"], ctx.in_shape()
    selections, dropped, advanced = read_index(ctx, p["index"], shape)
    index = p["index"] if isinstance(p["index"], tuple) else (p["index"],)
    if any(i is None for i in index):
        ctx.unsupported("setitem with None in the index")
    for ax, pos in selections.items():
        if len(set(pos)) != len(pos):
            ctx.unsupported(f"setitem with repeated positions along dim {ax} (which write wins is unspecified)")
    region = tuple(len(selections[d]) if d in selections else n for d, n in enumerate(shape))
    picked = tuple(n for d, n in enumerate(region) if d not in dropped)  # the shape of x[index]
    layers = []
    if is_activation(v):  # v broadcast to x[index], then shaped like the region it replaces
        layers, value = expand_layers(ctx, ctx.bottom(v), shape_of(v), picked)
        if picked != region:
            layers.append(reshape_layer(ctx, value, region, top=ctx.tmp("value")))
            value = layers[-1].tops[0]
    elif isinstance(v, bool) or not isinstance(v, (Blob, int, float)) or (isinstance(v, Blob) and v.value is None):
        ctx.unsupported(f"setitem of a {type(v).__name__} value")
    if not is_activation(x):
        if not is_activation(v):
            ctx.unsupported("setitem of a constant into a constant")
        base = ctx.tmp("base")
        layers += constant_over(ctx, ctx.array(x), shape, value, region, base)
    else:
        base = ctx.bottom(x)
    if not is_activation(v):  # a constant laid over the part it replaces
        const = v.value.detach().float().numpy() if isinstance(v, Blob) else float(v)
        const = np.broadcast_to(np.asarray(const, np.float32), picked).reshape(region)
        old_part, value = ctx.tmp("old"), ctx.tmp("value")
        more, _ = select(ctx, base, shape, selections, old_part) if selections else ([], base)
        layers += more + constant_over(ctx, const, region, old_part if selections else base, region, value)
    if not selections:
        return layers + [reshape_layer(ctx, value, shape, top=ctx.top)]
    return layers + _put(ctx, base, shape, sorted(selections.items()), value, ctx.top)


def _put(ctx, base, shape, axes, value, top):
    """``base`` with the positions of ``axes`` replaced by ``value``, one axis at a time (outermost first)."""
    (d, pos), rest = axes[0], axes[1:]
    layers = []
    if rest:
        inner = ctx.tmp("inner")
        layers, inner_shape = select(ctx, base, shape, {d: pos}, inner)
        new_inner = ctx.tmp("inner_new")
        layers += _put(ctx, inner, inner_shape, rest, value, new_inner)
        value = new_inner
    slot = {p: k for k, p in enumerate(pos)}
    segments = []
    for j in range(shape[d]):
        src, at = (1, slot[j]) if j in slot else (0, j)
        if segments and segments[-1][0] == src and segments[-1][2] == at:
            segments[-1][2] = at + 1
        else:
            segments.append([src, at, at + 1])
    return layers + assemble(ctx, d, [(base, shape[d]), (value, len(pos))], [tuple(s) for s in segments], top)


@register("copy")
def copy(node, ctx):
    """``x.copy_(src)`` (writes into slices of a view): ``src`` broadcast to x's shape."""
    p = node.params
    x, src, shape = p["input"], p["src"], ctx.in_shape()
    if is_activation(src):
        layers, _ = expand_layers(ctx, ctx.bottom(src), shape_of(src), shape, ctx.top)
        return layers
    if not is_activation(x) or not isinstance(src, Blob) or src.value is None:
        ctx.unsupported("copy_ of a constant into a constant")
    return constant_over(ctx, ctx.array(src), shape, ctx.bottom(x), shape, ctx.top)
