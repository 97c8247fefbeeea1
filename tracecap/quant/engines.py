"""Which arithmetic a quantized engine uses, as data the manifest carries.

The integer executor never guesses: ``rules(engine)`` probes the running torch once for the two
facts that differ between builds and machines, and returns the rules ``kernels`` dispatch on:

- ``quantize``: how ``torch.quantize_per_tensor`` rounds (torch 2.13: fused multiply-add of the
  reciprocal scale and the zero point, then round half to even - older builds added the zero
  point after rounding). A value that sits on a halfway point under one rule tells them apart.
- ``int16_pairs``: fbgemm multiplies uint8 activations by int8 weights with ``vpmaddubsw``, which
  adds each pair of products ``a[k]w[k] + a[k+1]w[k+1]`` into an int16 *with saturation*
  (AVX2/AVX-512 without VNNI). Activations observed with ``reduce_range`` stay below 128 and
  cannot saturate, but inputs outside the calibration range can. A probe with codes 255 x 127
  shows whether this machine saturates.

Engines: ``fbgemm`` and ``x86`` (fbgemm kernels; on CPUs with VNNI x86 sends convolutions to
oneDNN, which is refused) and ``qnnpack``. ``onednn`` is refused.
"""
from __future__ import annotations

import functools
import warnings

from tracecap.quant.errors import QuantError

SUPPORTED = ("fbgemm", "x86", "qnnpack")

# what each engine's linear/conv/add do, in the words of the manifest (see arithmetic.py)
_FAMILY = {
    "fbgemm": {
        "family": "fbgemm",
        "gemm": "uint8 x int8, int32 accumulation; acc - a_zp*colsum(w) - w_zp*rowsum(a)",
        "bias": "float: fma(bias, f32(1/act_times_w_scale), acc_f32) per tensor, acc_f32 + bias / act_times_w_scale "
                "per channel",
        "multiplier": "f32(f32(s_in * s_w) / s_out)",
        "add": "float: dequantize both (vector fma / scalar exact), add in float32, quantize (vector / scalar rule)",
    },
    "qnnpack": {
        "family": "qnnpack",
        "gemm": "(a - a_zp) * (w - w_zp) in int16, int32 accumulation (weights int8 + 128 as uint8, zero point + 128)",
        "bias": "int32: quantize(bias, s_w * s_in) added to the accumulator",
        "multiplier": "f32(f32(s_w * s_in) * f32(1 / s_out))",
        "add": "fixed point (same shapes, quint8): 22-bit multipliers, right shift rounding half away from zero",
    },
}
_FAMILY["x86"] = dict(_FAMILY["fbgemm"])


def current_engine():
    import torch
    return torch.backends.quantized.engine


def check_engine(engine):
    if engine not in SUPPORTED:
        raise QuantError(
            f"quantized engine {engine!r} is not reproduced by the integer executor; it reproduces "
            f"{', '.join(SUPPORTED)}. Prepare and run the model with torch.backends.quantized.engine set to "
            f"one of them (the engine decides the arithmetic, so the manifest must name the one used)")
    return engine


@functools.lru_cache(maxsize=None)
def rules(engine):
    """The arithmetic rules of ``engine`` on this machine and torch build (probed once)."""
    check_engine(engine)
    out = dict(_FAMILY[engine])
    out["engine"] = engine
    out["quantize"] = probe_quantize_rule()
    out["int16_pairs"] = probe_int16_pairs(engine) if out["family"] == "fbgemm" else False
    if engine == "x86" and _has_vnni():
        out["x86_conv_backend"] = "onednn"
    return out


def _quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


def probe_quantize_rule():
    """'fma' or 'mul_round_add': which rounding ``torch.quantize_per_tensor`` applies here.

    x = 3.2266498, s = 0.0439, zp = 66: x * (1/s) = 73.49999 in float32; adding 66 before
    rounding (fused) gives 139.5 -> 140, rounding first gives 73 + 66 = 139.
    """
    import torch
    ctx = _quiet()
    try:
        q = torch.quantize_per_tensor(torch.tensor([3.2266498]), 0.0439, 66, torch.quint8).int_repr().item()
    finally:
        ctx.__exit__(None, None, None)
    if q == 140:
        return "fma"
    if q == 139:
        return "mul_round_add"
    raise QuantError(f"torch.quantize_per_tensor rounds in a way tracecap does not know (probe gave {q})")


def probe_int16_pairs(engine):
    """True when fbgemm saturates u8 x s8 product pairs to int16 on this machine (no VNNI)."""
    import torch
    ctx = _quiet()
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine
        w = torch._make_per_tensor_quantized_tensor(torch.full((1, 2), 127, dtype=torch.int8), 1.0, 0)
        packed = torch.ops.quantized.linear_prepack(w, None)
        x = torch._make_per_tensor_quantized_tensor(torch.full((1, 2), 255, dtype=torch.uint8), 1.0, 0)
        y = torch.ops.quantized.linear(x, packed, 256.0, 0).int_repr().item()
    finally:
        torch.backends.quantized.engine = previous
        ctx.__exit__(None, None, None)
    # exact: 2*255*127 = 64770 -> 64770/256 = 253; saturated: 32767/256 -> 128
    if y == 128:
        return True
    if y == 253:
        return False
    raise QuantError(f"fbgemm's int8 GEMM behaves in a way tracecap does not know (probe gave {y})")


def _has_vnni():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError:
        return False
    return "avx512_vnni" in text or "amx_int8" in text
