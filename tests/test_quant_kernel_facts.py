"""The arithmetic facts the executor relies on, each shown on data that tells the rules apart.

Every test runs a PyTorch quantized kernel on inputs chosen (or searched) so that the rule the
executor uses and the plausible alternatives give different codes, then checks that the
executor matches PyTorch exactly *and* that the alternative does not - so each fact is
established by the test, not assumed by it.
"""
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

import tracecap
import tracecap.quant as Q
from tracecap.quant import arithmetic as A

from quant_models import engine, engines

GRID_A, GRID_B = (v.reshape(-1) for v in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))


def _q(codes, scale, zp, dtype=torch.quint8):
    kind = torch.uint8 if dtype is torch.quint8 else torch.int8
    return torch._make_per_tensor_quantized_tensor(torch.as_tensor(np.asarray(codes)).to(kind), scale, zp)


def _run(fn, inputs, engine_name):
    """(executor codes, PyTorch codes) of ``fn`` on quantized ``inputs``, captured then executed."""
    with warnings.catch_warnings(), engine(engine_name), torch.no_grad():
        warnings.simplefilter("ignore")
        with tracecap.capture() as cap:
            y = fn(*inputs)
        program = Q.read_graph(cap.graph)
    got = Q.execute(program, [t.int_repr() if t.is_quantized else t for t in inputs])
    return got.astype(np.int64), y.int_repr().numpy().astype(np.int64)


def _scales(rng, n):
    return [float(np.float32(v)) for v in rng.uniform(0.005, 0.2, n)]


# ---- fused multiply-add, emulated --------------------------------------------------------------------
def test_fma_f32_rounds_once():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(3000).astype(np.float32)
    b = (rng.standard_normal(3000) * 100).astype(np.float32)
    c = rng.integers(-300, 300, 3000).astype(np.float32)
    # a*b + c = 1 + 3*2**-24 - 2**-70: float64 rounds it onto a float32 halfway point (ties to even:
    # 1 + 2**-22); the exact value lies below it, so one rounding gives 1 + 2**-23
    a[0], b[0], c[0] = np.float32(2 ** -24 * (1 + 2 ** -23)), np.float32(1 - 2 ** -23), np.float32(1 + 2 ** -23)
    got = A.fma_f32(a, b, c)
    assert got[0] == np.float32(1 + 2 ** -23)
    assert np.float32(np.float64(a[0]) * np.float64(b[0]) + np.float64(c[0])) != got[0]
    for i in range(3000):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        assert Fraction(float(got[i])) == _round_f32(exact), i


def _round_f32(x):
    """Correct rounding of a rational to float32, ties to the even mantissa."""
    near = np.float32(float(x))
    cands = (np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf)))
    best = min(cands, key=lambda v: (abs(Fraction(float(v)) - x), int(np.array(v).view(np.int32)) & 1))
    return Fraction(float(best))


# ---- quantize ------------------------------------------------------------------------------------------
def test_quantize_per_tensor_adds_the_zero_point_before_rounding():
    """q = rne(fma(x, f32(1/s), zp)): values whose x/s sits just below a half step show it."""
    rng = np.random.default_rng(1)
    x, s, zp = [], 0.0439, 66
    inv = A.reciprocal(s)
    for k in range(-60, 180):
        base = (k + 0.5) / float(inv)
        x += list(np.float32(base) + np.arange(-40, 41, dtype=np.float32) * np.spacing(np.float32(base)))
    x = torch.tensor(np.array(x, dtype=np.float32))
    got, want = _run(lambda t: torch.quantize_per_tensor(t, s, zp, torch.quint8), [x], "fbgemm")
    assert (got != want).sum() == 0
    other = A.quantize(x.numpy(), s, zp, 0, 255, rule="mul_round_add")
    assert (other != want).sum() > 0, "the data does not separate the rules"
    assert tracecap.quant.engines.probe_quantize_rule() == "fma"
    del rng


# ---- fbgemm's int16 pairs ----------------------------------------------------------------------------
@pytest.mark.parametrize("per_channel", [False, True])
def test_fbgemm_int16_product_pairs_follow_the_probed_rule(per_channel):
    """The data overflows int16 pairs: without VNNI fbgemm saturates them, with VNNI it does not;
    the executor matches PyTorch with the probed rule and mismatches with the other one."""
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (5, 9)).astype(np.int8)
    w[:, :2] = 127
    if per_channel:
        wq = torch._make_per_channel_quantized_tensor(torch.from_numpy(w), torch.full((5,), 0.01, dtype=torch.double),
                                                      torch.zeros(5, dtype=torch.long), 0)
    else:
        wq = _q(w, 0.01, 0, torch.qint8)
    with engine("fbgemm"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = torch.ops.quantized.linear_prepack(wq, torch.randn(5))
    a = rng.integers(0, 256, (2000, 9))
    a[:, :2] = rng.integers(200, 256, (2000, 2))
    x = _q(a, 0.05, 3)
    got, want = _run(lambda t: torch.ops.quantized.linear(t, packed, 0.5, 128), [x], "fbgemm")
    assert (got != want).sum() == 0
    with engine("fbgemm"):
        with tracecap.capture() as cap:
            torch.ops.quantized.linear(x, packed, 0.5, 128)
        program = Q.read_graph(cap.graph)
    assert program.rules["int16_pairs"] == tracecap.quant.engines.probe_int16_pairs("fbgemm")
    program.manifest["arithmetic"] = dict(program.rules, int16_pairs=not program.rules["int16_pairs"])
    other = Q.execute(program, x.int_repr()).astype(np.int64)
    assert (other != want).sum() > 0, "no pair overflows int16: the data does not tell the rules apart"


def test_fbgemm_per_tensor_bias_is_one_fused_multiply_add():
    """acc_f32 + bias * rcp rounds once: the compiler fuses the AVX2 mul and add into an FMA.

    Biases are searched so that (acc + bias/(s_in*s_w)) * m lands next to a half step, where the
    fused and the two-rounding forms give different codes.
    """
    rng = np.random.default_rng(3)
    cases = []
    while len(cases) < 8:
        s_in, s_w, s_out = (float(np.float32(v)) for v in (rng.uniform(0.01, 0.1), rng.uniform(1e-3, 1e-2),
                                                              rng.uniform(0.02, 0.3)))
        atw, mult = A.fbgemm_multiplier(s_in, s_w, s_out)
        rcp = np.float32(1.0 / np.float64(atw))
        code = int(rng.integers(0, 256))
        raw = np.float32(40 * (code - 128))
        target = (int(rng.integers(-100, 100)) + 0.5) / float(mult) - float(raw)
        b0 = np.float32(target / float(rcp))
        for step in range(-30, 31):
            b = np.float32(b0 + step * np.spacing(b0))
            fused = A.requantize_float(A.fma_f32(b, rcp, raw), mult, 128)
            split = A.requantize_float(np.float32(raw + np.float32(b * rcp)), mult, 128)
            if fused != split:
                cases.append((s_in, s_w, s_out, b, code))
                break
    bad_fused = bad_split = 0
    with engine("fbgemm"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s_in, s_w, s_out, b, code in cases:
            w = torch.full((1, 40), 1, dtype=torch.int8)
            packed = torch.ops.quantized.linear_prepack(_q(w, s_w, 0, torch.qint8), torch.tensor([float(b)]))
            y = torch.ops.quantized.linear(_q(np.full((1, 40), code), s_in, 128), packed, s_out, 128).int_repr().item()
            atw, mult = A.fbgemm_multiplier(s_in, s_w, s_out)
            rcp = np.float32(1.0 / np.float64(atw))
            raw = np.float32(40 * (code - 128))        # sum(a) - a_zp * sum(w), weights all 1
            bad_fused += int(A.requantize_float(A.fma_f32(b, rcp, raw), mult, 128) != y)
            bad_split += int(A.requantize_float(np.float32(raw + np.float32(b * rcp)), mult, 128) != y)
    assert bad_fused == 0
    assert bad_split == len(cases)


# ---- quantized add -------------------------------------------------------------------------------------
def _add_rules(qa, qb, sa, za, sb, zb, s, zp, relu):
    """(vector-block rule, scalar-tail rule) codes of a quantized add."""
    out = []
    for deq, rule in (("fma", "mul_round_add"), ("exact", "mul_add_round")):
        c = (A.dequantize(qa, sa, za, deq) + A.dequantize(qb, sb, zb, deq)).astype(np.float32)
        q = A.quantize(np.maximum(c, np.float32(0)) if relu else c, s, zp, 0, 255, rule)
        out.append(q)
    return out


@pytest.mark.parametrize("relu", [False, True])
def test_fbgemm_add_vector_blocks_and_scalar_tails(relu):
    """Blocks of 64 elements dequantize with an FMA and round before adding the zero point; the
    tail (the last n % 64) dequantizes exactly and adds the zero point before rounding. Full
    256x256 code grids test the blocks; the grid cells where the two rules differ, sent as calls
    of 63 elements, test the tails."""
    rng = np.random.default_rng(4)
    op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
    bad = {"executor": 0, "vector rule everywhere": 0, "scalar rule everywhere": 0}
    trials = 0
    while trials < 4 or not (bad["vector rule everywhere"] and bad["scalar rule everywhere"]):
        trials += 1
        assert trials < 40, bad
        sa, sb, s = _scales(rng, 3)
        za, zb, zp = (int(v) for v in rng.integers(0, 250, 3))
        vec, tail = _add_rules(GRID_A, GRID_B, sa, za, sb, zb, s, zp, relu)
        got, want = _run(lambda u, v: op(u, v, s, zp), [_q(GRID_A, sa, za), _q(GRID_B, sb, zb)], "fbgemm")
        bad["executor"] += int((got != want).sum())
        bad["scalar rule everywhere"] += int((tail != want).sum())
        idx = np.nonzero(vec != tail)[0]
        if idx.size == 0:
            continue
        idx = np.resize(idx, 63)
        a, b = _q(GRID_A[idx], sa, za), _q(GRID_B[idx], sb, zb)
        got, want = _run(lambda u, v: op(u, v, s, zp), [a, b], "fbgemm")
        bad["executor"] += int((got != want).sum())
        bad["vector rule everywhere"] += int((vec[idx] != want).sum())
    assert bad["executor"] == 0, bad


@pytest.mark.skipif("qnnpack" not in engines(), reason="this torch build has no qnnpack engine")
def test_qnnpack_add_is_fixed_point():
    rng = np.random.default_rng(5)
    bad_exec = bad_float = 0
    for _ in range(6):
        sa, sb, s = _scales(rng, 3)
        za, zb, zp = (int(v) for v in rng.integers(0, 250, 3))
        a, b = _q(GRID_A, sa, za), _q(GRID_B, sb, zb)
        got, want = _run(lambda u, v: torch.ops.quantized.add(u, v, s, zp), [a, b], "qnnpack")
        bad_exec += int((got != want).sum())
        c = (A.dequantize(GRID_A, sa, za, "fma") + A.dequantize(GRID_B, sb, zb, "fma")).astype(np.float32)
        bad_float += int((A.quantize(c, s, zp, 0, 255, "mul_round_add") != want).sum())
    assert bad_exec == 0
    assert bad_float > 0


def test_add_tails_follow_the_thread_chunks():
    """Above 32768 elements PyTorch splits the add over threads; each chunk has its own tail."""
    rng = np.random.default_rng(6)
    while True:
        sa, sb, s = _scales(rng, 3)
        za, zb, zp = (int(v) for v in rng.integers(0, 250, 3))
        vec = A.quantize((A.dequantize(GRID_A, sa, za, "fma") + A.dequantize(GRID_B, sb, zb, "fma")).astype(np.float32),
                         s, zp, 0, 255, "mul_round_add")
        tail = A.quantize((A.dequantize(GRID_A, sa, za, "exact") + A.dequantize(GRID_B, sb, zb, "exact"))
                          .astype(np.float32), s, zp, 0, 255, "mul_add_round")
        idx = np.nonzero(vec != tail)[0]
        if idx.size:
            break
    n = 2 * 32768 + 1000
    a, b = _q(np.resize(GRID_A[idx], n), sa, za), _q(np.resize(GRID_B[idx], n), sb, zb)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with engine("fbgemm"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = torch.ops.quantized.add(a, b, s, zp).int_repr().numpy().astype(np.int64)
            with tracecap.capture() as cap:
                torch.ops.quantized.add(a, b, s, zp)
            program = Q.read_graph(cap.graph)
    finally:
        torch.set_num_threads(previous)
    inputs = [a.int_repr(), b.int_repr()]
    assert (Q.execute(program, inputs, threads=2).astype(np.int64) != want).sum() == 0
    assert (Q.execute(program, inputs, threads=1).astype(np.int64) != want).sum() > 0


# ---- mul and cat ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine_name", engines())
def test_mul_requantizes_the_integer_product(engine_name):
    rng = np.random.default_rng(7)
    for _ in range(4):
        sa, sb, s = _scales(rng, 3)
        s = s * 20
        za, zb, zp = (int(v) for v in rng.integers(0, 250, 3))
        got, want = _run(lambda u, v: torch.ops.quantized.mul(u, v, s, zp), [_q(GRID_A, sa, za), _q(GRID_B, sb, zb)],
                         engine_name)
        assert (got != want).sum() == 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_cat_requantizes_each_input(channels_last):
    rng = np.random.default_rng(8)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    bad = 0
    for c1, c2 in ((3, 45), (40, 9), (8, 16)):
        sa, sb, s = _scales(rng, 3)
        za, zb, zp = (int(v) for v in rng.integers(0, 250, 3))
        a = _q(rng.integers(0, 256, (6, c1, 5, 7)), sa, za).contiguous(memory_format=fmt)
        b = _q(rng.integers(0, 256, (6, c2, 5, 7)), sb, zb).contiguous(memory_format=fmt)
        got, want = _run(lambda u, v: torch.ops.quantized.cat([u, v], 1, s, zp), [a, b], "fbgemm")
        bad += int((got != want).sum())
    assert bad == 0


# ---- the integer-only alternative ------------------------------------------------------------------------
def test_fixed_point_multiplier_represents_the_float_multiplier():
    m = np.array([1e-4, 0.0123, 0.5, 0.75, 0.99999994, 1.0, 3.7], dtype=np.float32)
    m0, shift = A.fixed_point_multiplier(m)
    assert ((m0 >= 2 ** 30) & (m0 < 2 ** 31)).all()
    assert np.allclose(m0 * 2.0 ** -shift.astype(float), m, rtol=2 ** -30)
    acc = np.arange(-100000, 100000, 997)
    y = A.requantize_fixed_point(acc[:, None], m0[None, 1], shift[None, 1], 10, -10 ** 9, 10 ** 9)
    assert np.abs(y[:, 0] - 10 - acc * float(m[1])).max() <= 0.5 + 1e-6
