"""The number-level rules of PyTorch's quantized CPU kernels, in numpy.

Every function here reproduces one rounding step bit for bit; which step a kernel uses is
decided by ``kernels`` from the engine rules the manifest records (``engines``). The rules,
measured on torch 2.13 (x86-64, AVX2) and cross-checked with the fbgemm/QNNPACK sources:

- quantize (``torch.quantize_per_tensor``, QuantStub): ``q = clamp(rne(fma(x, 1/s, zp)))`` with
  ``1/s`` rounded to float32 and the multiply-add fused (fbgemm ``QuantizeAvx2<LEGACY>``);
- the vector quantize inside quantized add/cat: ``rne(f32(x * 1/s)) + zp``; their scalar tail
  (``quantize_val``): ``rne(f32(f32(x * 1/s) + zp))`` - three roundings, three rules;
- dequantize: ``f32(s * (q - zp))`` (scalar, fbgemm ``Dequantize``) or, in vector kernels,
  ``fma(s, q, f32(-zp * s))``;
- requantize (linear/conv): ``y = f32(acc_f32 * m)``, ``rne``, int16 saturation, ``+ zp`` with
  int16 saturation, clamp to [0 or zp (fused ReLU), 255].

``rne`` is round half to even (``np.rint``, x86 ``cvtps2dq`` in the default MXCSR mode).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
F64 = np.float64
# the largest float32 below 2**31: kernels clip to it before cvtps2dq (which would wrap)
INT32_FLOAT_MAX = F32(2147483520.0)

DTYPE_RANGE = {"quint8": (0, 255), "qint8": (-128, 127), "qint32": (-2 ** 31, 2 ** 31 - 1),
               "uint8": (0, 255), "int8": (-128, 127)}


def f32(x):
    return np.asarray(x, dtype=F32)


def fma_f32(a, b, c):
    """``a * b + c`` for float32 arrays with one rounding, as the FMA instruction computes it.

    The product of two float32 values is exact in float64; the sum may not be, and rounding
    that inexact float64 to float32 can land on a float32 halfway point it was not on (double
    rounding). The exact error of the sum (TwoSum) decides those rare cases.
    """
    a, b, c = np.broadcast_arrays(*(np.asarray(v, dtype=F32) for v in (a, b, c)))
    shape = a.shape
    a, b, c = (v.reshape(-1).astype(F64) for v in (a, b, c))
    p = a * b
    s = p + c
    bp = s - c
    err = (p - bp) + (c - (s - bp))          # s + err == p + c exactly
    r = s.astype(F32)
    gap = np.abs(np.spacing(r)).astype(F64)
    off = np.abs(s - r.astype(F64))
    near = (off == 0.5 * gap) | (off == 0.25 * gap)  # exactly halfway (the gap below a power of 2 is half)
    if np.any(near):
        idx = np.nonzero(near)
        rs, ss, es = r[idx], s[idx], err[idx]
        other = np.nextafter(rs, np.where(ss > rs.astype(F64), F32(np.inf), F32(-np.inf)).astype(F32))
        mid = (rs.astype(F64) + other.astype(F64)) * 0.5
        go_other = (ss == mid) & (es != 0) & ((es > 0) == (other.astype(F64) > rs.astype(F64)))
        if np.any(go_other):
            r[idx[0][go_other]] = other[go_other]
    return r.reshape(shape)


def reciprocal(scale):
    """``1.f / float(scale)``: the inverse scale every quantize kernel multiplies by."""
    return (F32(1.0) / f32(scale)).astype(F32)


def _round_to_int(t):
    return np.rint(np.minimum(t, INT32_FLOAT_MAX)).astype(np.int64)


def quantize(x, scale, zero_point, qmin, qmax, rule="fma"):
    """Float values to integer codes by one of the three rules PyTorch uses (module docstring).

    ``rule``: ``"fma"`` (tensor quantize), ``"mul_round_add"`` (vector kernels),
    ``"mul_add_round"`` (scalar ``quantize_val``). Broadcasts per-channel scale/zero_point.
    """
    x = f32(x)
    inv = reciprocal(scale)
    zp = np.asarray(zero_point, dtype=np.int64)
    if rule == "fma":
        q = _round_to_int(fma_f32(x, inv, zp.astype(F32)))
    elif rule == "mul_round_add":
        q = _round_to_int((x * inv).astype(F32)) + zp
    elif rule == "mul_add_round":
        q = _round_to_int(((x * inv).astype(F32) + zp.astype(F32)).astype(F32))
    else:
        raise ValueError(f"unknown quantize rule {rule!r}")
    return np.clip(q, qmin, qmax)


def dequantize(q, scale, zero_point, rule="exact"):
    """Codes to float32: ``"exact"`` = ``f32(s * (q - zp))``; ``"fma"`` = ``fma(s, q, f32(-zp * s))``."""
    s = f32(scale)
    if rule == "exact":
        return ((np.asarray(q, dtype=np.int64) - np.asarray(zero_point, dtype=np.int64)).astype(F64)
                * s.astype(F64)).astype(F32)
    if rule == "fma":
        # s*q (24 + 8 bits) and s*zp rounded to float32 add exactly in float64, so one rounding
        # of the float64 sum is the FMA's result
        premul = (s * f32(-np.asarray(zero_point, dtype=np.int64))).astype(F32)
        return (s.astype(F64) * np.asarray(q, dtype=F64) + premul.astype(F64)).astype(F32)
    raise ValueError(f"unknown dequantize rule {rule!r}")


def saturate_int16(v):
    return np.clip(v, -32768, 32767)


def requantize_float(acc, multiplier, zero_point, lo=0, hi=255):
    """float32 accumulator * float32 multiplier -> codes, the AVX2/SSE2 requantization sequence:
    ``cvtps2dq`` (rne), ``packs_epi32`` (int16 saturation), ``adds_epi16`` (+ zero point, saturating),
    ``packus_epi16`` and the [lo, hi] clamp (lo = zero point for a fused ReLU)."""
    y = np.array(np.rint((f32(acc) * f32(multiplier)).astype(F32)), dtype=F32)   # the steps below are exact
    np.clip(y, -32768, 32767, out=y)
    y += F32(zero_point)
    np.clip(y, max(lo, -32768), min(hi, 32767), out=y)
    return y.astype(np.int64)


# ---- multipliers -------------------------------------------------------------------------------
def fbgemm_multiplier(in_scale, w_scale, out_scale):
    """fbgemm (linear/conv): ``act_times_w = f32(s_in * s_w)``, ``m = f32(act_times_w / s_out)``."""
    atw = (f32(in_scale) * f32(w_scale)).astype(F32)
    return atw, (atw / f32(out_scale)).astype(F32)


def qnnpack_multiplier(in_scale, w_scale, out_scale):
    """PyTorch's QNNPACK glue: ``m = f32(f32(s_w * s_in) * f32(1 / s_out))`` (a reciprocal, not a division)."""
    return ((f32(w_scale) * f32(in_scale)).astype(F32) * reciprocal(out_scale)).astype(F32)


def fixed_point_multiplier(multiplier):
    """(int32 M0, right shift) with ``multiplier ~= M0 * 2**-shift`` and M0 in [2**30, 2**31).

    The usual integer-only form (gemmlowp, TFLite, fbgemm's ``ChooseRequantizationMultiplier``):
    ``y = (acc * M0 + 2**(shift - 1)) >> shift``. PyTorch's CPU kernels do *not* use it; it is
    exported for hardware that has no float unit (see ``requantize_fixed_point``).
    """
    m = np.atleast_1d(np.asarray(multiplier, dtype=F64))
    if np.any(m <= 0) or not np.all(np.isfinite(m)):
        raise ValueError("requantization multipliers must be positive and finite")
    mant, exp = np.frexp(m)                  # m = mant * 2**exp, mant in [0.5, 1)
    m0 = np.rint(mant * 2.0 ** 31).astype(np.int64)
    carry = m0 == 2 ** 31                    # mant rounded up to 1.0
    m0 = np.where(carry, 2 ** 30, m0)
    exp = np.where(carry, exp + 1, exp)
    return m0.astype(np.int32), (31 - exp).astype(np.int32)


def requantize_fixed_point(acc, m0, shift, zero_point, lo=0, hi=255):
    """Integer-only requantization: ``(acc * M0 + 2**(shift-1)) >> shift`` (arithmetic), + zp, clamp."""
    acc = np.asarray(acc, dtype=np.int64)
    m0 = np.asarray(m0, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    prod = acc * m0
    nudge = np.left_shift(np.int64(1), np.maximum(shift - 1, 0))
    return np.clip(((prod + nudge) >> shift) + int(zero_point), lo, hi)


# ---- QNNPACK's quantized add: fixed point, rounding half away from zero -------------------------
def qnnpack_add_params(a_scale, b_scale, out_scale):
    """(a multiplier, b multiplier, shift) of ``pytorch_qnnp_compute_add_quantization_params``.

    ``a/out`` and ``b/out`` are float32 ratios; the shift puts the larger ratio's multiplier in
    [2**21, 2**22). QNNPACK refuses ratios outside [2**-14, 2**8).
    """
    ra = (f32(a_scale) / f32(out_scale)).astype(F32)
    rb = (f32(b_scale) / f32(out_scale)).astype(F32)
    for r, which in ((ra, "first"), (rb, "second")):
        if not (2.0 ** -14 <= float(r) < 2.0 ** 8):
            raise ValueError(f"QNNPACK add: the {which} input's scale ratio {float(r):.6g} is outside [2**-14, 2**8)")
    exponent = int((np.array(max(ra, rb), dtype=F32).view(np.uint32) >> 23)) - 127
    shift = 21 - exponent
    factor = F32(2.0 ** shift)
    am = int(np.rint((ra * factor).astype(F32)))
    bm = int(np.rint((rb * factor).astype(F32)))
    return am, bm, shift


def qnnpack_add(qa, a_zp, qb, b_zp, am, bm, shift, out_zp, lo=0, hi=255):
    """``acc = -(am*a_zp + bm*b_zp) + qa*am + qb*bm`` in int32, shifted right with rounding half
    away from zero (the remainder test of q8vadd), + output zero point, clamp."""
    acc = (np.asarray(qa, dtype=np.int64) * am + np.asarray(qb, dtype=np.int64) * bm - (am * a_zp + bm * b_zp))
    acc = ((acc + 2 ** 31) % 2 ** 32) - 2 ** 31          # int32 arithmetic wraps
    mask = (1 << shift) - 1
    rem = (acc & mask) - (acc < 0)
    out = (acc >> shift) + (rem > (mask >> 1))
    return np.clip(out + out_zp, lo, hi)


# ---- dynamic quantization: the input's parameters are chosen per call --------------------------
SMALL_SCALE_THRESHOLD = float(F32(6.1e-5))   # a float constant in the C++ source


def choose_qparams(x_min, x_max, qmin=0, qmax=255, reduce_range=False):
    """PyTorch's ``ChooseQuantizationParams`` (double arithmetic, float32 result scale)."""
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    lo, hi = min(float(F32(x_min)), 0.0), max(float(F32(x_max)), 0.0)
    lo, hi = float(F32(lo)), float(F32(hi))
    scale = (hi - lo) / (qmax - qmin)
    if float(F32(scale)) == 0.0 or np.isinf(F32(1.0) / F32(scale)):
        scale = 0.1
    if scale < SMALL_SCALE_THRESHOLD:
        org = F32(scale)
        scale = SMALL_SCALE_THRESHOLD
        small = F32(SMALL_SCALE_THRESHOLD)
        if lo == 0.0:
            hi = float(small * F32(qmax - qmin))
        elif hi == 0.0:
            lo = float(-small * F32(qmax - qmin))
        else:
            amp = small / org
            lo, hi = float(F32(lo) * amp), float(F32(hi) * amp)
    zp_min = qmin - lo / scale
    zp_max = qmax - hi / scale
    err_min = abs(qmin) - abs(lo / scale)
    err_max = abs(qmax) - abs(hi / scale)
    initial = zp_min if err_min < err_max else zp_max
    if initial < qmin:
        zp = qmin
    elif initial > qmax:
        zp = qmax
    else:
        zp = int(np.rint(initial))
    return float(F32(scale)), zp
