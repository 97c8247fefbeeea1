"""Pooling: max/average windows, adaptive pooling and max unpooling, with Caffe's output-size rounding.

Caffe's AVE pooling divides by the window clipped to the padded input - torch's ``count_include_pad=True``
rule, also past the border in ceil mode (measured on both runtimes); other divisors are that Pooling
followed by a constant Scale map of divisor ratios. Adaptive windows ``[floor(i*in/out), ceil((i+1)*in/out))``
that are evenly spaced are one Pooling; uneven ones are a constant matrix per axis (average) or a
stride-1 max Pooling read at two window ends per axis (max). A max Pooling with two tops gives torch's
indices (flat position in the input plane, first maximum on ties, on both runtimes), from which
``max_unpool2d`` is rebuilt.
"""
from __future__ import annotations

import numpy as np

from tracecap.mappers.caffe.constructions import (constant_map, conv_spatial, linear_map, pool_spatial, power_layer,
                                                   round_mode)
from tracecap.mappers.caffe.registry import caffe_name, pair, register


def _caffe_pool_size(size, k, s, p, ceil):
    n = size + 2 * p - k
    out = (-(-n // s) if ceil else n // s) + 1
    if p and (out - 1) * s >= size + p:  # Caffe: the last window must start inside the image
        out -= 1
    return out


def _pool(ctx, method, kernel, stride, pad, ceil, tops=None):
    in_shape = ctx.in_shape()
    if len(in_shape) != 4:
        ctx.unsupported(f"pooling on a {len(in_shape)}-D tensor; Caffe pools N×C×H×W")
    want = ctx.out_shape()[2:]
    got = tuple(_caffe_pool_size(in_shape[2 + i], kernel[i], stride[i], pad[i], ceil) for i in range(2))
    if got != want:  # rounding may flip the mode that reproduces PyTorch's size
        alt = tuple(_caffe_pool_size(in_shape[2 + i], kernel[i], stride[i], pad[i], not ceil) for i in range(2))
        if alt != want:
            ctx.unsupported(f"Caffe pooling gives {got} (or {alt}), PyTorch {want}")
        ceil = not ceil
    params = {"pool": method, **pool_spatial(kernel, stride, pad), **round_mode(ctx, ceil)}
    return [ctx.layer("Pooling", [ctx.bottom(ctx.node.params["input"])], tops, params=params)]


def _window_args(p):
    kernel = pair(p["kernel_size"], "kernel_size")
    stride = pair(p["stride"] if p["stride"] not in (None, (), []) else kernel, "stride")
    return kernel, stride, pair(p["padding"], "padding")


@register("max_pool2d")
def max_pool2d(node, ctx):
    """MAX Pooling; with ``return_indices`` its second top is Caffe's max mask, torch's indices as floats."""
    p = node.params
    if pair(p["dilation"], "dilation") != (1, 1):
        ctx.unsupported("dilated max pooling")
    kernel, stride, pad = _window_args(p)
    if not p["return_indices"]:
        return _pool(ctx, "MAX", kernel, stride, pad, p["ceil_mode"])
    indices = caffe_name(node.tops[1])
    # an unread mask stays a dangling top: OpenCV drops a mask nobody reads, and a Silence then fails
    return _pool(ctx, "MAX", kernel, stride, pad, p["ceil_mode"], tops=[ctx.top, indices])


def _divisors(size, k, s, p, count):
    """Per output index along one axis: the window length torch's and Caffe's AVE pooling divide by when
    padding counts (clipped to input + pad), and the one clipped to the input."""
    padded, inside = [], []
    for i in range(count):
        lo = i * s - p
        hi = min(lo + k, size + p)
        padded.append(hi - lo)
        inside.append(min(hi, size) - max(lo, 0))
    return np.array(padded, np.float64), np.array(inside, np.float64)


@register("avg_pool2d")
def avg_pool2d(node, ctx):
    p = node.params
    kernel, stride, pad = _window_args(p)
    override = p.get("divisor_override")
    if not override and (pad == (0, 0) or p["count_include_pad"]):
        return _pool(ctx, "AVE", kernel, stride, pad, p["ceil_mode"])
    pooled = ctx.tmp("ave")
    layers = _pool(ctx, "AVE", kernel, stride, pad, p["ceil_mode"], tops=[pooled])
    n, c, oh, ow = ctx.out_shape()
    (ph, ih), (pw, iw) = [_divisors(ctx.in_shape()[2 + a], kernel[a], stride[a], pad[a], (oh, ow)[a]) for a in (0, 1)]
    caffe = np.outer(ph, pw)  # what the Pooling layer divided by
    want = np.full_like(caffe, float(override)) if override else np.outer(ih, iw)
    return layers + constant_map(ctx, pooled, (n, c, oh, ow), scale=caffe / want, top=ctx.top, guard=False)


def _adaptive_windows(size, out):
    """torch's adaptive windows along one axis: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _even(windows):
    """(kernel, stride) when every window has one length and they start a fixed stride apart, else None."""
    lengths = {hi - lo for lo, hi in windows}
    steps = {b[0] - a[0] for a, b in zip(windows, windows[1:])}
    if len(lengths) != 1 or len(steps) > 1:
        return None
    return lengths.pop(), (steps.pop() if steps else 1)


@register("adaptive_avg_pool2d", "adaptive_max_pool2d")
def adaptive_pool2d(node, ctx):
    method = "AVE" if node.op == "adaptive_avg_pool2d" else "MAX"
    shape = ctx.in_shape()
    if len(shape) != 4:
        ctx.unsupported(f"adaptive pooling of a {len(shape)}-D tensor")
    n, c, h, w = shape
    oh, ow = ctx.out_shape()[2:]
    x = ctx.bottom(node.params["input"])
    tops, indices = None, node.params.get("return_indices")
    if indices:
        tops = [ctx.top, caffe_name(node.tops[1])]
    if (oh, ow) == (1, 1):
        layers = [ctx.layer("Pooling", [x], tops, params={"pool": method, "global_pooling": True})]
    else:
        wins = [_adaptive_windows(h, oh), _adaptive_windows(w, ow)]
        even = [_even(ws) for ws in wins]
        if None not in even:
            (kh, sh), (kw, sw) = even
            params = {"pool": method, **pool_spatial((kh, kw), (sh, sw), (0, 0)), **round_mode(ctx, False)}
            layers = [ctx.layer("Pooling", [x], tops, params=params)]
        elif indices:
            ctx.unsupported(f"adaptive_max_pool2d(return_indices=True) over uneven windows ({h}x{w} -> {oh}x{ow}): "
                            f"no Caffe layer gives their argmax")
        elif method == "AVE":
            mats = {}
            for axis, ws in ((2, wins[0]), (3, wins[1])):
                m = np.zeros((len(ws), shape[axis]))
                for i, (lo, hi) in enumerate(ws):
                    m[i, lo:hi] = 1.0 / (hi - lo)
                mats[axis] = m
            return linear_map(ctx, x, shape, mats, ctx.top)
        else:
            return _uneven_max(ctx, x, shape, wins)
    return layers  # an unread mask dangles, as in max_pool2d


def _uneven_max(ctx, x, shape, wins):
    """Max over uneven windows: a stride-1 MAX Pooling with the shortest window k per axis, then per axis
    the larger of its values at each window's two ends (a window no longer than 2k is covered by the
    k-windows starting at lo and at hi - k); both reads are one 0/1 matrix (a gather), exact."""
    short = [min(hi - lo for lo, hi in ws) for ws in wins]
    for ws, k in zip(wins, short):
        if max(hi - lo for lo, hi in ws) > 2 * k:
            ctx.unsupported(f"adaptive max windows longer than twice the shortest ({k})")
    slid = ctx.tmp("sliding_max")
    layers = [ctx.layer("Pooling", [x], [slid], params={"pool": "MAX", **pool_spatial(tuple(short), (1, 1), (0, 0)),
                                                         **round_mode(ctx, False)})]
    steps = []
    for axis in (3, 2):
        ws, k = wins[axis - 2], short[axis - 2]
        starts = np.zeros((len(ws), shape[axis] - k + 1))
        ends = np.zeros_like(starts)
        for i, (lo, hi) in enumerate(ws):
            starts[i, lo] = 1.0
            ends[i, hi - k] = 1.0
        if not (np.array_equal(starts, ends) and np.array_equal(starts, np.eye(len(starts)))):
            steps.append((axis, starts, ends))
    cur, cur_shape = slid, (shape[0], shape[1], shape[2] - short[0] + 1, shape[3] - short[1] + 1)
    for n, (axis, starts, ends) in enumerate(steps):
        out = ctx.top if n == len(steps) - 1 else ctx.tmp("max_w")
        if np.array_equal(starts, ends):  # windows of one length: one read
            layers += linear_map(ctx, cur, cur_shape, {axis: starts}, out)
        else:
            both, first, second = ctx.tmp("ends"), ctx.tmp("at_start"), ctx.tmp("at_end")
            layers += linear_map(ctx, cur, cur_shape, {axis: np.vstack([starts, ends])}, both)
            layers.append(ctx.layer("Slice", [both], [first, second], name=ctx.tmp("split"),
                                    params={"axis": axis, "slice_point": [len(starts)]}))
            layers.append(ctx.layer("Eltwise", [first, second], [out], params={"operation": "MAX"}))
        cur, cur_shape = out, cur_shape[:axis] + (len(starts),) + cur_shape[axis + 1:]
    return layers


@register("max_unpool2d")
def max_unpool2d(node, ctx):
    """out[q] = v[window of q] where q is that window's recorded argmax, else 0 (SegNet-style decoders).

    Rebuilt from the max mask of the pooling that made the indices, when its windows tile the input
    (stride == kernel) and the output is that input's plane: the mask and v are spread back over their
    windows (0/1 matrices), the mask minus each position's own flat index is 0 exactly at the argmax,
    ``relu(1 - |d|)`` turns that into 1/0 (indices are integers), and v is multiplied by it.
    """
    p = node.params
    v, indices = p["input"], p["indices"]
    pool = indices.producer if hasattr(indices, "producer") else None
    if pool is None or pool.op != "max_pool2d" or len(pool.tops) < 2 or pool.tops[1] is not indices:
        ctx.unsupported("max_unpool2d whose indices do not come from a max_pool2d(return_indices=True) "
                        "in the graph")
    kernel, stride, pad = _window_args(pool.params)
    if stride != kernel:
        ctx.unsupported(f"max_unpool2d after pooling with overlapping or gapped windows (kernel {kernel}, "
                        f"stride {stride}): a position may be the argmax of several windows")
    n, c, h, w = pool.params["input"].shape
    oh, ow = ctx.out_shape()[2:]
    if (oh, ow) != (h, w):
        ctx.unsupported(f"max_unpool2d to {oh}x{ow} with indices into a {h}x{w} plane: torch writes the flat "
                        f"indices into a plane of another width")
    ph, pw = ctx.shape(v)[2:]
    spread = {}
    for axis, size, pooled in ((2, h, ph), (3, w, pw)):
        m = np.zeros((size, pooled))
        for q in range(size):
            i = (q + pad[axis - 2]) // kernel[axis - 2]
            if i < pooled:
                m[q, i] = 1.0
        spread[axis] = m
    row_bias, col_bias = -w * np.arange(h, dtype=np.float64), -np.arange(w, dtype=np.float64)
    diff, dist, near, hit, v_up = (ctx.tmp(s) for s in ("mask_minus_position", "distance", "near", "hit", "spread"))
    layers = linear_map(ctx, ctx.bottom(indices), (n, c, ph, pw), {2: (spread[2], row_bias), 3: (spread[3], col_bias)},
                        diff)
    layers += [ctx.layer("AbsVal", [diff], [dist]),
               power_layer(ctx, dist, scale=-1.0, shift=1.0, top=near),
               ctx.layer("ReLU", [near], [hit])]
    if pad == (0, 0) and (h, w) == (ph * kernel[0], pw * kernel[1]):  # exact tiling: nearest by the kernel
        params = {"num_output": c, "bias_term": False, **conv_spatial({"kernel": kernel, "stride": kernel, "pad": (0, 0)}),
                  "group": c}
        layers.append(ctx.layer("Deconvolution", [ctx.bottom(v)], [v_up], params=params,
                                blobs=[np.ones((c, 1) + kernel, np.float32)]))
    else:
        layers += linear_map(ctx, ctx.bottom(v), (n, c, ph, pw), spread, v_up)
    return layers + [ctx.layer("Eltwise", [v_up, hit], [ctx.top], params={"operation": "PROD"})]
