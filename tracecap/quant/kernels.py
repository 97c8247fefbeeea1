"""The integer reference kernels: one function per manifest op kind, numpy only.

Each kernel takes the op's manifest entry, its input arrays (integer codes in logical NCHW order,
or float32) and the ``Context`` (program, engine rules, options) and returns its outputs. The
rounding steps are those of ``arithmetic``; which step applies where is the engine's rule:

- linear / conv2d: fbgemm - int32 accumulation (int16 pairs where the probe saw saturation),
  zero-point corrections by row and column sums, float bias at the accumulator scale, float32
  multiplier; qnnpack - zero points subtracted before multiplying, int32 bias, float32 multiplier;
- add: fbgemm and qnnpack's fallback - dequantize, add, quantize in float32, with different
  roundings for 64-element vector blocks and the tail of each parallel chunk; qnnpack (same
  shapes, quint8) - fixed point;
- mul, cat, relu, max_pool2d, reshape: the same on both engines.

``Context.mode == "integer_only"`` replaces the linear/conv requantization by exact int32
accumulation + int32 bias + fixed-point multiplier (what integer-only hardware does); it is not
PyTorch's arithmetic and exists to measure how far such hardware lands from it.
"""
from __future__ import annotations

import numpy as np

from tracecap.quant import arithmetic as A
from tracecap.quant import gemm
from tracecap.quant import layout as layouts
from tracecap.quant.errors import QuantError

CODES = np.int16         # codes of quint8 and qint8 alike, between kernels
GRAIN_SIZE = 32768      # at::internal::GRAIN_SIZE: TensorIterator splits work into chunks this large
VEC_BLOCK = 64          # cpu_kernel_vec: 2 x Vectorized<quint8>::size() on AVX2


class Context:
    def __init__(self, program, mode="pytorch", threads=1):
        if mode not in ("pytorch", "integer_only"):
            raise QuantError(f"mode must be 'pytorch' or 'integer_only', got {mode!r}")
        if not isinstance(threads, int) or threads < 1:
            raise QuantError(f"threads must be a positive int, got {threads!r}")
        self.program = program
        self.rules = program.rules
        self.mode = mode
        self.threads = threads

    def qparams(self, name):
        t = self.program.tensor(name)
        if "scale" not in t:
            raise QuantError(f"{self.program.source}: tensor {name!r} is not quantized")
        return t["scale"], t["zero_point"]

    def layout(self, name):
        return self.program.tensor(name).get("layout")


# ---- boundaries ----------------------------------------------------------------------------------
def quantize(op, inputs, ctx):
    (x,) = inputs
    out = op["outputs"][0]
    s, zp = ctx.qparams(out)
    lo, hi = A.DTYPE_RANGE[ctx.program.tensor(out)["dtype"]]
    return [A.quantize(x, s, zp, lo, hi, rule=ctx.rules["quantize"]).astype(CODES)]


def dequantize(op, inputs, ctx):
    s, zp = ctx.qparams(op["inputs"][0])
    return [A.dequantize(inputs[0], s, zp, "exact")]


# ---- linear and convolution ----------------------------------------------------------------------
class LayerNumbers:
    """A linear/conv layer's per-output-channel numbers, read once from the program (sliceable by group)."""

    def __init__(self, op, ctx, matrix=None):
        prog, w = ctx.program, op["weight"]
        if matrix is None:
            ints = prog.integers(w)
            matrix = ints if ints.ndim == 2 else gemm.conv_weight_matrix(ints)
        n = matrix.shape[0]
        rq, bias = op["requantize"], op.get("bias")
        self.w = matrix
        self.per_channel = w["qscheme"] == "per_channel_affine"
        self.w_zp = np.broadcast_to(prog.zero_points(w), (n,)).astype(np.int64)
        self.mult = np.broadcast_to(prog.raw(rq["multiplier"]), (n,)).astype(np.float32)
        self.atw = np.broadcast_to(prog.raw(rq["act_times_weight_scale"]), (n,)).astype(np.float32)
        self.m0 = np.broadcast_to(prog.raw(rq["multiplier_int32"]), (n,)).astype(np.int64)
        self.shift = np.broadcast_to(prog.raw(rq["right_shift"]), (n,)).astype(np.int64)
        self.bias = None if bias is None else prog.raw(bias["array"]).astype(np.float32)
        self.bias32 = None if bias is None else prog.raw(bias["int32"]).astype(np.int64)

    def rows(self, sl):
        out = object.__new__(LayerNumbers)
        for k, v in vars(self).items():
            out.__dict__[k] = v[sl] if isinstance(v, np.ndarray) else v
        return out


def requantized_product(nums, a, a_zp, o_zp, relu, ctx):
    """codes (M, K) x weights (N, K) -> output codes (M, N), by the engine's rule (module docstring).

    ``a`` may be float32 holding exact integers (im2col writes it so, saving a conversion)."""
    lo = o_zp if relu else 0
    if ctx.mode == "integer_only" or ctx.rules["family"] == "qnnpack":
        acc = gemm.exact_matmul(a - np.float32(a_zp) if a.dtype == np.float32 else a.astype(np.int32) - a_zp,
                                nums.w - nums.w_zp[:, None], a_bound=255)
        if nums.bias32 is not None:
            acc = acc + nums.bias32[None, :]
        if ctx.mode == "integer_only":
            return A.requantize_fixed_point(acc, nums.m0[None, :], nums.shift[None, :], o_zp, lo).astype(CODES)
        return A.requantize_float(acc.astype(np.float32), nums.mult[None, :], o_zp, lo).astype(CODES)
    k, n = a.shape[1], nums.w.shape[0]
    w_and_ones = np.vstack([nums.w, np.ones((1, k), dtype=nums.w.dtype)])      # the last column: row sums of a
    product = gemm.saturated_matmul if ctx.rules["int16_pairs"] else gemm.exact_matmul
    acc = product(a, w_and_ones)          # a pair a*1 + a*1 never saturates: the row sums stay exact
    rowsum = acc[:, n]
    raw = acc[:, :n]
    if a_zp:
        raw = raw - a_zp * (nums.w.sum(1) - nums.w_zp * k)[None, :]
    if nums.w_zp.any():
        raw = raw - rowsum[:, None] * nums.w_zp[None, :]
    accf = raw.astype(np.float32)
    if nums.bias is not None:
        if nums.per_channel:
            accf = (accf + (nums.bias / nums.atw).astype(np.float32)[None, :]).astype(np.float32)
        else:  # bias * reciprocal (rounded once from double) fused into the add by the compiler: one FMA
            rcp = np.float32(1.0 / np.float64(nums.atw[0]))
            accf = A.fma_f32(nums.bias[None, :], rcp, accf)
    return A.requantize_float(accf, nums.mult[None, :], o_zp, lo).astype(CODES)


def linear(op, inputs, ctx):
    (x,) = inputs
    a = np.asarray(x).reshape(-1, x.shape[-1])
    _, a_zp = ctx.qparams(op["inputs"][0])
    _, o_zp = ctx.qparams(op["outputs"][0])
    y = requantized_product(LayerNumbers(op, ctx), a, a_zp, o_zp, op["relu"], ctx)
    return [y.reshape(*x.shape[:-1], -1)]


def conv2d(op, inputs, ctx):
    """Per group: im2col (padding = input zero point), the shared product, NHWC -> NCHW."""
    (x,) = inputs
    nums = LayerNumbers(op, ctx)
    groups = op["groups"]
    o = nums.w.shape[0]
    kh, kw = op["weight"]["shape"][2:]
    cg = op["weight"]["shape"][1]
    _, a_zp = ctx.qparams(op["inputs"][0])
    _, o_zp = ctx.qparams(op["outputs"][0])
    outs = []
    for g in range(groups):
        cols, oh, ow = gemm.im2col(x[:, g * cg:(g + 1) * cg], (kh, kw), op["stride"], op["padding"], op["dilation"],
                                   a_zp, dtype=np.float32)
        rows = slice(g * (o // groups), (g + 1) * (o // groups))
        outs.append(requantized_product(nums.rows(rows), cols, a_zp, o_zp, op["relu"], ctx))
    y = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
    return [y.reshape(x.shape[0], oh, ow, o).transpose(0, 3, 1, 2)]


def linear_dynamic(op, inputs, ctx):
    """Float in, float out: the input's parameters are chosen from this batch's min and max."""
    (x,) = inputs
    x = np.asarray(x, dtype=np.float32)
    lead = x.shape[:-1]
    a_f = x.reshape(-1, x.shape[-1])
    prog = ctx.program
    w = op["weight"]
    w_ints = prog.integers(w)
    w_scale = np.broadcast_to(np.asarray(prog.raw(w["scale"]), dtype=np.float64), (w_ints.shape[0],))
    w_zp = np.broadcast_to(prog.zero_points(w), (w_ints.shape[0],)).astype(np.int64)
    s_in, a_zp = A.choose_qparams(a_f.min() if a_f.size else 0.0, a_f.max() if a_f.size else 0.0,
                                  reduce_range=op["reduce_range"] and ctx.rules["family"] == "fbgemm")
    a = A.quantize(a_f, s_in, a_zp, 0, 255, rule=ctx.rules["quantize"])
    if ctx.rules["family"] == "fbgemm":
        acc = gemm.saturated_matmul(a, w_ints) if ctx.rules["int16_pairs"] else gemm.exact_matmul(a, w_ints)
        raw = acc - a_zp * (w_ints.sum(1) - w_zp * a.shape[1])[None, :] - a.sum(1)[:, None] * w_zp[None, :]
    else:
        raw = gemm.exact_matmul(a - a_zp, w_ints - w_zp[:, None])
    scale = (np.float32(s_in) * w_scale.astype(np.float32)).astype(np.float32)
    y = (raw.astype(np.float32) * scale[None, :]).astype(np.float32)
    if op.get("bias") is not None:
        bias = prog.raw(op["bias"]["array"]).astype(np.float32)[None, :]
        if ctx.rules["family"] == "fbgemm":   # x * scale + bias fused (FMA) in fbgemm's AVX2 kernel
            y = A.fma_f32(raw.astype(np.float32), scale[None, :], bias)
        else:                                 # QNNPACK's SSE2 kernel: multiply, then add
            y = (y + bias).astype(np.float32)
    if op["relu"]:
        y = np.maximum(y, np.float32(0))
    return [y.reshape(*lead, -1)]


# ---- elementwise -----------------------------------------------------------------------------------
def _memory_view(array, layout_name):
    """``array`` (logical order) permuted into memory order, with the permutation to undo it."""
    if layout_name and array.ndim >= 3 and layout_name != layouts.LOGICAL.get(array.ndim):
        order = layouts.order_of(layout_name, array.ndim)
        return np.transpose(array, order), np.argsort(order)
    return array, None


def vector_mask(n, threads):
    """True where PyTorch's ``cpu_kernel_vec`` takes the vector path for element i of n (memory order)."""
    mask = np.ones(n, dtype=bool)
    tasks = 1 if n < GRAIN_SIZE or threads == 1 else min(threads, -(-n // GRAIN_SIZE))
    chunk = -(-n // tasks) if n else 0
    for start in range(0, n, max(chunk, 1)):
        length = min(chunk, n - start)
        mask[start + length // VEC_BLOCK * VEC_BLOCK:start + length] = False
    return mask


def binary(op, inputs, ctx):
    qa, qb = (np.asarray(v, dtype=np.int32) for v in inputs)
    (sa, za), (sb, zb) = ctx.qparams(op["inputs"][0]), ctx.qparams(op["inputs"][1])
    s, zp = ctx.qparams(op["outputs"][0])
    lo = zp if op["relu"] else 0
    if op["kind"] == "mul":
        mult = ((np.float32(sa) * np.float32(sb)).astype(np.float32) * A.reciprocal(s)).astype(np.float32)
        prod = (qa - za) * (qb - zb)
        q = np.rint((prod.astype(np.float32) * mult).astype(np.float32)).astype(np.int64) + zp
        return [np.clip(q, lo, 255).astype(CODES)]
    if "qnnpack" in op or ctx.mode == "integer_only":
        p = op.get("qnnpack") or dict(zip(("a_multiplier", "b_multiplier", "right_shift"),
                                          A.qnnpack_add_params(sa, sb, s)))
        return [A.qnnpack_add(qa, za, qb, zb, p["a_multiplier"], p["b_multiplier"], p["right_shift"], zp, lo)
                .astype(CODES)]
    # the float path; the vector/tail split runs over memory order (channels-last tensors are NHWC)
    ma, back = _memory_view(qa, ctx.layout(op["outputs"][0]))
    mb, _ = _memory_view(qb, ctx.layout(op["outputs"][0]))
    flat_a, flat_b = ma.reshape(-1), mb.reshape(-1)
    vec = vector_mask(flat_a.size, ctx.threads)
    q = np.empty(flat_a.size, dtype=CODES)
    for part, deq, rule in ((vec, "fma", "mul_round_add"), (~vec, "exact", "mul_add_round")):
        if part.all():
            sel = slice(None)
        elif part.any():
            sel = np.nonzero(part)[0]
        else:
            continue
        c = (A.dequantize(flat_a[sel], sa, za, deq) + A.dequantize(flat_b[sel], sb, zb, deq)).astype(np.float32)
        if op["relu"]:
            c = np.maximum(c, np.float32(0))
        q[sel] = A.quantize(c, s, zp, 0, 255, rule)
    q = q.reshape(ma.shape)
    return [np.transpose(q, back) if back is not None else q]


def cat(op, inputs, ctx):
    s, zp = ctx.qparams(op["outputs"][0])
    dim = op["dim"]
    nhwc = dim == 1 and all(v.ndim == 4 for v in inputs) and all(
        ctx.layout(name) == "NHWC" or inputs[i].shape[2] * inputs[i].shape[3] == 1
        for i, name in enumerate(op["inputs"]))
    parts = []
    for name, q in zip(op["inputs"], inputs):
        si, zi = ctx.qparams(name)
        q = np.asarray(q, dtype=np.int64)
        if nhwc:
            parts.append(_cat_nhwc_part(q, si, zi, s, zp, op["relu"]))
        else:
            parts.append(A.dequantize(q, si, zi, "exact"))
    if nhwc:
        return [np.concatenate(parts, axis=1).astype(CODES)]
    q = A.quantize(np.concatenate(parts, axis=dim), s, zp, 0, 255, rule=ctx.rules["quantize"])
    return [(np.maximum(q, zp) if op["relu"] else q).astype(CODES)]


def _cat_nhwc_part(q, si, zi, s, zp, relu):
    """qcat_nhwc_kernel for one input: copy if its parameters match; else per pixel, channels in
    blocks of 32 and then 8 take the vector rules, the last < 8 channels the scalar ones."""
    if (si, zi) == (s, zp) and not relu:
        return q
    c = q.shape[1]
    full = c // 32 * 32
    rest = c - full
    vec_end = full + (rest // 8 * 8 if rest >= 8 else 0)
    vec = np.zeros(c, dtype=bool)
    vec[:vec_end] = True
    vec = vec[None, :, None, None]
    deq = np.where(vec, A.dequantize(q, si, zi, "fma"), A.dequantize(q, si, zi, "exact"))
    if relu:
        deq = np.maximum(deq, np.float32(0))
    return np.where(vec, A.quantize(deq, s, zp, 0, 255, "mul_round_add"), A.quantize(deq, s, zp, 0, 255, "mul_add_round"))


def relu(op, inputs, ctx):
    _, zp = ctx.qparams(op["inputs"][0])
    return [np.maximum(inputs[0], zp)]


def relu_float(op, inputs, ctx):
    return [np.maximum(np.asarray(inputs[0], dtype=np.float32), np.float32(0))]


def max_pool2d(op, inputs, ctx):
    (x,) = inputs
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = op["kernel_size"], op["stride"], op["padding"], op["dilation"]
    n, c, h, w = x.shape
    if (kh, kw) == (sh, sw) and (ph, pw, dh, dw) == (0, 0, 1, 1) and h % kh == 0 and w % kw == 0:
        return [x.reshape(n, c, h // kh, kh, w // kw, kw).max(axis=(3, 5))]    # tiling windows
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    oh, ow = _pool_out(h, eh, sh, ph, op["ceil_mode"]), _pool_out(w, ew, sw, pw, op["ceil_mode"])
    low = np.iinfo(np.int32).min
    need_h, need_w = (oh - 1) * sh + eh, (ow - 1) * sw + ew
    xp = np.full((n, c, max(need_h, h + 2 * ph), max(need_w, w + 2 * pw)), low, dtype=np.int32)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    from numpy.lib.stride_tricks import sliding_window_view
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]
    return [win.max(axis=(-1, -2)).astype(CODES)]


def _pool_out(size, eff, stride, pad, ceil):
    num = size + 2 * pad - eff
    out = (-(-num // stride) if ceil else num // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:   # the last window must start inside the input or left pad
        out -= 1
    return out


def reshape(op, inputs, ctx):
    (x,) = inputs
    out_shape = list(op["shape"])
    in_shape = ctx.program.tensor(op["inputs"][0])["shape"]
    if out_shape and in_shape and out_shape[0] == in_shape[0] and x.shape[0] != in_shape[0]:
        out_shape[0] = x.shape[0]      # the batch dimension follows the input
    return [x.reshape(out_shape)]


KERNELS = {
    "quantize": quantize, "dequantize": dequantize, "linear": linear, "conv2d": conv2d,
    "linear_dynamic": linear_dynamic, "add": binary, "mul": binary, "cat": cat, "relu": relu,
    "relu_float": relu_float, "max_pool2d": max_pool2d, "reshape": reshape,
}
