"""Caffe from a quantized capture, on both real runtimes, and the quantization table beside it.

The Caffe net is the float model the integers encode (dequantized weights, identity quantize and
dequantize), so it is checked twice: against a float twin computed in torch from the same
dequantized weights (must agree to float rounding: the mapping is exact) and against PyTorch's
quantized output (they differ by the activations' rounding to the grid: the measured error is
printed and must stay within ``STEPS`` output quantization steps on calibration-range inputs).
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tracecap import replay
from tracecap.graph import Blob, map_structure
from tracecap.mappers import caffe
from tracecap.quant.facts import unpack_conv, unpack_linear

import quant_models as M
from conversion import run_on, save_both

BATCH = 64
STEPS = 2


def _float_twin_call(node, env):
    """What the Caffe layers compute for one node, in float torch (identity for quantize/dequantize)."""
    p = map_structure(node.params, lambda o: env[o.name] if isinstance(o, Blob) else o)
    op = node.op
    deq = (lambda t: t.dequantize() if getattr(t, "is_quantized", False) else t)
    if op in ("quantize_per_tensor", "dequantize"):
        return deq(p["input"])
    if op.startswith("quantized::linear"):
        w, b = unpack_linear(p["packed_params"])
        y = F.linear(deq(p["input"]), w.dequantize(), b)
    elif op.startswith("quantized::conv2d"):
        w, b, stride, padding, dilation, groups, _ = unpack_conv(p["packed_params"])
        y = F.conv2d(deq(p["input"]), w.dequantize(), b, stride, padding, dilation, groups)
    elif op.startswith("quantized::add"):
        y = deq(p["input"]) + deq(p["other"])
    else:
        from tracecap.ops import reference
        args = map_structure(node.params, lambda o: deq(env[o.name]) if isinstance(o, Blob) else o)
        return reference.IMPL[op](args)
    return torch.relu(y) if op.endswith("_relu") else y


def _cases():
    return [pytest.param(mode, cls, id=f"{mode}-{cls.__name__}") for mode in ("eager", "fx") for cls in (M.MLP, M.CNN)]


@pytest.mark.parametrize("mode, cls", _cases())
def test_quantized_capture_runs_on_caffe(mode, cls, runtime, tmp_path):
    model = M.BUILDERS[mode](cls, "fbgemm", per_channel=True)
    shape = (BATCH,) + M.SHAPES[cls][1:]
    graph = M.capture(model, shape, "fbgemm")
    x = M.calibration(shape, seed=9, n=BATCH)
    with M.engine("fbgemm"), torch.no_grad():
        pytorch = model(x)
        twin = replay.run(graph, x, call=_float_twin_call)[0]
    paths = save_both(graph, tmp_path)
    got = run_on(runtime, graph, paths, [x])[0].reshape(pytorch.shape)
    twin_diff = float(np.abs(got - twin.numpy()).max())
    assert twin_diff <= 1e-5 * max(1.0, float(twin.abs().max())), twin_diff
    out_scale = next(b.quant.scale for b in graph.blobs.values()
                     if b.quant is not None and b.users and any(u.op == "dequantize" for u in b.users))
    err = float(np.abs(got - pytorch.numpy()).max())   # the FX MLP ends in a softmax: probabilities move less
    print(f"\n{mode} {cls.__name__} on {runtime}: max |Caffe - PyTorch quantized| = {err:.3g} "
          f"({err / out_scale:.2f} output steps of {out_scale:.3g}); vs float twin {twin_diff:.2g}")
    assert err <= STEPS * out_scale
    from tracecap.mappers.caffe import writer
    types = [layer.type for layer in writer.load(*paths["opencv"], dialect="opencv").layer]
    assert types.count("Power") >= 2            # quantize and dequantize: identities


def test_quantization_table_is_written_next_to_the_model(tmp_path):
    model = M.eager(M.CNN, "fbgemm", per_channel=True)
    graph = M.capture(model, (1, 3, 8, 8), "fbgemm")
    caffe.save(graph, tmp_path / "net.prototxt", tmp_path / "net.caffemodel", dialect="opencv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.caffemodel", "net.prototxt", "net.quant.json"]
    table = json.loads((tmp_path / "net.quant.json").read_text())
    assert table["format"] == "tracecap-caffe-quant-table" and "ncnn" in table["conventions"]
    for blob in graph.blobs.values():
        if blob.quant is not None:
            entry = table["blobs"][blob.name]
            assert (entry["scale"], entry["zero_point"]) == (blob.quant.scale, blob.quant.zero_point)
    conv = next(v for v in table["layers"].values() if v["node"] == "conv2")
    assert conv["type"] == "Convolution" and conv["weight"]["scheme"] == "per_channel_affine"
    assert conv["weight"]["scale"] == [float(s) for s in model.conv2.weight().q_per_channel_scales()]
    assert len(conv["weight"]["ncnn_scale"]) == 8
    assert "ncnn_scale" not in table["blobs"]["conv1"]          # asymmetric quint8: no ncnn scale
    assert not list(tmp_path.glob("*.table"))


def test_a_float_graph_gets_no_table(tmp_path):
    import tracecap
    net = torch.nn.Sequential(torch.nn.Linear(2, 3)).eval()
    with torch.no_grad(), tracecap.capture() as cap:
        net(torch.zeros(1, 2))
    caffe.save(cap.graph, tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.caffemodel", "f.prototxt"]
