"""Bit-exactness of ``tracecap.quant.execute`` against PyTorch's quantized CPU kernels.

For the MLP of ../shared/quantized-case.md and a small CNN (conv-bn-relu fused, conv-bn fused,
FloatFunctional residual add, ReLU, max pool, flatten, linear), in eager and FX graph mode, with
per-tensor and per-channel weights, on every engine this torch build has: 1,000 inputs drawn at
3x the calibration spread (a part of them quantizes to codes calibration never produced), run as
one batch. Every quantized tensor of the forward must match PyTorch code for code, and the
dequantized output float for float. fbgemm is also run with full-range activations (no
``reduce_range``), where its int16 product pairs saturate.
"""
import warnings

import numpy as np
import pytest
import torch

import tracecap.quant as Q
from tracecap.errors import UnsupportedOpError
from tracecap.quant import arithmetic as A
from tracecap.quant import engines

import quant_models as M

N_INPUTS = 1000


def _cases():
    out = []
    for eng in M.engines() + (["x86"] if "x86" in torch.backends.quantized.supported_engines else []):
        for mode in ("eager", "fx"):
            for cls in (M.MLP, M.CNN):
                for per_channel in (False, True):
                    ranges = (None, False) if eng != "qnnpack" else (None,)
                    for rr in ranges:
                        out.append(pytest.param(eng, mode, cls, per_channel, rr,
                                                id=f"{eng}-{mode}-{cls.__name__}-{'pc' if per_channel else 'pt'}"
                                                   f"{'-fullrange' if rr is False else ''}"))
    return out


@pytest.mark.parametrize("engine_name, mode, cls, per_channel, reduce_range", _cases())
def test_execute_matches_pytorch_code_for_code(engine_name, mode, cls, per_channel, reduce_range, tmp_path):
    shape = M.SHAPES[cls]
    model = M.BUILDERS[mode](cls, engine_name, per_channel=per_channel, reduce_range=reduce_range)
    x = M.test_inputs(shape, n=N_INPUTS)
    graph = M.capture(model, shape, engine_name)
    if cls is M.CNN and engines.rules(engine_name).get("x86_conv_backend") == "onednn":
        # a VNNI CPU: x86 sends quantized convolutions to oneDNN, whose arithmetic is not reproduced
        with M.engine(engine_name), pytest.raises(UnsupportedOpError, match=r"oneDNN.*use the fbgemm engine"):
            Q.export(graph, tmp_path)
        return
    with M.engine(engine_name):
        Q.export(graph, tmp_path)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eager_out = model(x)
    _, reference = M.reference_codes(model, x, engine_name)
    out, every = Q.execute(tmp_path, x, trace=True)
    checked = {name: M.mismatches(every[name], codes) for name, codes in reference.items() if name in every}
    assert len(checked) >= (3 if cls is M.MLP else 7), sorted(checked)
    assert sum(checked.values()) == 0, {k: v for k, v in checked.items() if v}
    # beyond the calibration range: some input codes sit at the clamp
    first = every[Q.load(tmp_path).ops[0]["outputs"][0]]
    assert ((first == 0) | (first == 255)).any()
    # the codes dequantize to PyTorch's float output exactly (the MLP in FX mode ends in a float softmax)
    spec = Q.load(tmp_path).outputs[0]
    t = Q.load(tmp_path).tensors[spec["tensor"]]
    if spec["then_in_float"] == ["dequantize"]:
        assert np.array_equal(A.dequantize(out, t["scale"], t["zero_point"]), eager_out.numpy())
    else:
        deq = torch.from_numpy(A.dequantize(out, t["scale"], t["zero_point"]))
        assert spec["then_in_float"] == ["dequantize", "softmax"]
        assert torch.equal(torch.softmax(deq, dim=1), eager_out)


def test_the_int16_pair_rule_matters_for_full_range_fbgemm():
    """Without reduce_range these inputs make int16 product pairs overflow: on AVX2 without VNNI
    fbgemm saturates them (exact int32 accumulation, what a naive re-implementation does,
    mismatches), with VNNI it accumulates in int32 (saturating would mismatch). The executor
    follows the rule probed on this machine and matches; the other rule must not."""
    model = M.eager(M.CNN, "fbgemm", per_channel=True, reduce_range=False)
    x = M.test_inputs(M.SHAPES[M.CNN], n=N_INPUTS)
    graph = M.capture(model, M.SHAPES[M.CNN], "fbgemm")
    with M.engine("fbgemm"):
        program = Q.read_graph(graph)
    _, reference = M.reference_codes(model, x, "fbgemm")
    _, every = Q.execute(program, x, trace=True)
    assert all(M.mismatches(every[k], v) == 0 for k, v in reference.items() if k in every)
    program.manifest["arithmetic"] = dict(program.rules, int16_pairs=not program.rules["int16_pairs"])
    _, other = Q.execute(program, x, trace=True)
    assert sum(M.mismatches(other[k], v) for k, v in reference.items() if k in other) > 0


@pytest.mark.parametrize("engine_name", M.engines())
def test_dynamic_linear_matches_pytorch_float_for_float(engine_name):
    import tracecap
    from torch import nn
    with M.engine(engine_name), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 17), nn.ReLU(), nn.Linear(17, 9)).eval()
        dyn = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        with torch.no_grad(), tracecap.capture() as cap:
            dyn(torch.zeros(1, 6))
        program = Q.read_graph(cap.graph)
        assert [op["kind"] for op in program.ops] == ["linear_dynamic", "relu_float", "linear_dynamic"]
        bad = total = 0
        for seed in range(20):
            x = torch.randn(50, 6, generator=torch.Generator().manual_seed(seed)) * (1 + seed)
            with torch.no_grad():
                want = dyn(x).numpy()
            got = Q.execute(program, x)
            bad += int((got != want).sum())
            total += want.size
    assert program.outputs[0]["kind"] == "float"
    assert bad == 0 and total == 20 * 50 * 9


def test_integer_only_mode_is_near_but_not_pytorch():
    """Exact int32 accumulation + int32 bias + fixed-point multipliers (integer-only hardware) lands
    within one code of fbgemm on calibration-range inputs, but not on every code."""
    model = M.eager(M.CNN, "fbgemm", per_channel=True)
    graph = M.capture(model, M.SHAPES[M.CNN], "fbgemm")
    with M.engine("fbgemm"):
        program = Q.read_graph(graph)
    x = M.calibration(M.SHAPES[M.CNN], seed=7, n=N_INPUTS)
    pytorch = Q.execute(program, x).astype(np.int64)
    integer = Q.execute(program, x, mode="integer_only").astype(np.int64)
    differ = int((pytorch != integer).sum())
    print(f"\ninteger_only vs fbgemm, CNN, {N_INPUTS} calibration-range inputs: {differ} of {pytorch.size} codes differ")
    assert 0 < differ < 0.05 * pytorch.size
    assert np.abs(pytorch - integer).max() == 1
