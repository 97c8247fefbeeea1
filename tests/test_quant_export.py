"""``tracecap.quant.export``: what the files hold, round trips, and refusals that write nothing."""
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tracecap
import tracecap.quant as Q
from tracecap.errors import TracecapError, UnsupportedOpError
from tracecap.quant import arithmetic as A
from tracecap.quant import manifest as files

import quant_models as M


@pytest.fixture(scope="module")
def cnn():
    model = M.eager(M.CNN, "fbgemm", per_channel=True)
    return model, M.capture(model, M.SHAPES[M.CNN], "fbgemm")


def _export(graph, path, **kw):
    with M.engine("fbgemm"):
        return Q.export(graph, path, **kw)


def test_files_say_scale_and_zero_point_for_every_tensor(cnn, tmp_path):
    model, graph = cnn
    path = _export(graph, tmp_path)
    manifest = json.loads(path.read_text())
    arrays = np.load(tmp_path / "arrays.npz")
    assert manifest["engine"] == "fbgemm" and manifest["arithmetic"]["quantize"] == "fma"
    quantized = {k: t for k, t in manifest["tensors"].items() if t["dtype"] == "quint8"}
    assert {"quant", "conv1", "conv2", "relu2", "pool", "flatten", "fc"} <= set(quantized)
    for name, t in quantized.items():
        assert arrays[t["scale_array"]] == t["scale"] and arrays[t["zero_point_array"]] == t["zero_point"]
        assert t["scale_array"].endswith(".scale") and t["zero_point_array"].endswith(".zero_point")
    # conv outputs live channels-last in PyTorch; the manifest says so from their strides
    assert quantized["conv1"]["layout"] == "NHWC" and quantized["quant"]["layout"] == "NCHW"
    conv1 = next(op for op in manifest["ops"] if op["name"] == "conv1")
    assert conv1["weight"]["pytorch_layout"] == "OHWI" and conv1["weight"]["pytorch_stride"] == [27, 1, 9, 3]
    assert conv1["weight"]["layout"] == "OIHW" and arrays[conv1["weight"]["array"]].shape == (8, 3, 3, 3)
    assert arrays[conv1["weight"]["array"]].dtype == np.int8
    for key in ("multiplier", "multiplier_int32", "right_shift"):
        assert arrays[conv1["requantize"][key]].shape == (8,)
    assert arrays[conv1["bias"]["int32"]].dtype == np.int32
    # the int32 bias is the float bias at scale s_in * s_w
    s_in = quantized["quant"]["scale"]
    w_scale = arrays[conv1["weight"]["scale"]]
    b32 = arrays[conv1["bias"]["int32"]].astype(np.float64)
    assert np.abs(b32 * w_scale * s_in - arrays[conv1["bias"]["array"]]).max() <= 0.5 * (w_scale * s_in).max() * 1.0001
    # the fixed-point multiplier is the float one, M0 * 2**-shift
    m = arrays[conv1["requantize"]["multiplier"]].astype(np.float64)
    m0, shift = arrays[conv1["requantize"]["multiplier_int32"]], arrays[conv1["requantize"]["right_shift"]]
    assert np.allclose(m0 * 2.0 ** -shift.astype(float), m, rtol=2 ** -30)
    assert [o["kind"] for o in manifest["outputs"]] == ["codes"] and manifest["outputs"][0]["tensor"] == "fc"


def test_exported_integers_dequantize_to_the_module_weights(cnn, tmp_path):
    model, graph = cnn
    _export(graph, tmp_path)
    program = Q.load(tmp_path)
    modules = dict(model.named_modules())
    seen = 0
    for op in program.ops:
        if "weight" not in op:
            continue
        w = op["weight"]
        ints, zp = program.integers(w), program.zero_points(w)
        scale = program.raw(w["scale"])
        shape = (-1,) + (1,) * (ints.ndim - 1)
        deq = A.dequantize(ints, scale.reshape(shape), zp.reshape(shape))
        ref = modules[op["module"]].weight()
        assert np.array_equal(ints, ref.int_repr().numpy())
        assert np.array_equal(deq, ref.dequantize().numpy())
        seen += 1
    assert seen == 3


def test_uint8_and_nhwc_options_round_trip(cnn, tmp_path):
    model, graph = cnn
    _export(graph, tmp_path / "int8")
    _export(graph, tmp_path / "uint8", int8_as="uint8", weight_layout="OHWI")
    a, b = Q.load(tmp_path / "int8"), Q.load(tmp_path / "uint8")
    conv = next(op for op in b.ops if op["name"] == "conv2")
    raw_u8 = b.raw(conv["weight"]["array"])
    raw_i8 = a.raw(conv["weight"]["array"])
    assert raw_u8.dtype == np.uint8 and raw_u8.shape == (8, 3, 3, 8)          # OHWI
    assert np.array_equal(raw_u8.astype(np.int64) - 128, raw_i8.transpose(0, 2, 3, 1).astype(np.int64))
    assert np.array_equal(b.raw(conv["weight"]["zero_point"]), a.raw(conv["weight"]["zero_point"]) + 128)
    x = M.test_inputs(M.SHAPES[M.CNN], n=50)
    assert np.array_equal(Q.execute(tmp_path / "int8", x), Q.execute(tmp_path / "uint8", x))
    # int8 -> uint8 -> int8 is lossless, byte for byte
    Q.reencode(tmp_path / "int8", tmp_path / "re_u8", int8_as="uint8")
    Q.reencode(tmp_path / "re_u8", tmp_path / "back", int8_as="int8")
    first, back = np.load(tmp_path / "int8" / "arrays.npz"), np.load(tmp_path / "back" / "arrays.npz")
    assert sorted(first.files) == sorted(back.files)
    for key in first.files:
        assert first[key].dtype == back[key].dtype and first[key].tobytes() == back[key].tobytes(), key
    assert json.loads((tmp_path / "int8" / "manifest.json").read_text()) == json.loads(
        (tmp_path / "back" / "manifest.json").read_text())


def test_a_float_model_gets_a_clear_error(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU()).eval()
    with torch.no_grad(), tracecap.capture() as cap:
        model(torch.zeros(1, 2))
    with pytest.raises(Q.QuantError, match="float model") as err:
        Q.export(cap.graph, tmp_path / "out")
    assert isinstance(err.value, TracecapError)
    assert not (tmp_path / "out").exists()


class _WithUnsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AvgPool2d(2)
        self.act = nn.Hardswish()
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.act(self.pool(self.conv(self.quant(x)))))


def test_unsupported_quantized_ops_are_listed_with_module_and_line(tmp_path):
    from torch.ao import quantization as tq
    with M.engine("fbgemm"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _WithUnsupported().eval()
        model.qconfig = tq.get_default_qconfig("fbgemm")
        tq.prepare(model, inplace=True)
        model(torch.randn(4, 3, 8, 8))
        tq.convert(model, inplace=True)
        graph = M.capture(model, (1, 3, 8, 8), "fbgemm")
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "manifest.json").write_text("previous")
        with pytest.raises(UnsupportedOpError) as err:
            Q.export(graph, tmp_path / "out")
    text = str(err.value)
    assert "2 op(s)" in text
    assert "module `pool` (AvgPool2d)" in text and "module `act` (Hardswish)" in text
    assert "test_quant_export.py:" in text
    assert [n.scope for n, _ in err.value.refusals] == ["pool", "act"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json"]
    assert (tmp_path / "out" / "manifest.json").read_text() == "previous"


def test_a_failure_while_writing_leaves_nothing_half_written(cnn, tmp_path, monkeypatch):
    model, graph = cnn
    _export(graph, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(files.json, "dumps", fail)
    with pytest.raises(OSError):
        _export(graph, tmp_path)
    monkeypatch.undo()
    real_savez = np.savez

    def half(buf, **arrays):
        real_savez(buf, **arrays)
        raise OSError("disk full")
    monkeypatch.setattr(files.np, "savez", half)
    with pytest.raises(OSError):
        _export(graph, tmp_path)
    monkeypatch.undo()
    # the arrays file is moved into place, then moving the manifest fails: the arrays go back
    from tracecap import atomic
    real_replace, calls = atomic.os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("device gone")
        return real_replace(src, dst)
    other = M.eager(M.CNN, "fbgemm", per_channel=False, seed=5)
    monkeypatch.setattr(atomic.os, "replace", second_fails)
    with pytest.raises(OSError, match="device gone"):
        _export(M.capture(other, M.SHAPES[M.CNN], "fbgemm"), tmp_path)
    monkeypatch.undo()
    assert len(calls) >= 2
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_damaged_programs_are_refused_clearly(cnn, tmp_path):
    model, graph = cnn
    _export(graph, tmp_path)
    manifest = (tmp_path / "manifest.json").read_text()
    x = M.test_inputs(M.SHAPES[M.CNN], n=2)
    with pytest.raises(Q.QuantError, match="no quantized program here"):
        Q.execute(tmp_path / "nowhere", x)
    (tmp_path / "manifest.json").write_text(manifest[:200])
    with pytest.raises(Q.QuantError, match="not a readable manifest"):
        Q.execute(tmp_path, x)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(Q.QuantError, match="not a tracecap quantized manifest"):
        Q.execute(tmp_path, x)
    bad = json.loads(manifest)
    bad["ops"][1]["kind"] = "conv7d"
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(Q.QuantError, match="unknown kind 'conv7d'"):
        Q.execute(tmp_path, x)
    (tmp_path / "manifest.json").write_text(manifest)
    arrays = dict(np.load(tmp_path / "arrays.npz"))
    del arrays["ops/fc.weight"]
    np.savez(tmp_path / "arrays.npz", **arrays)
    with pytest.raises(Q.QuantError, match="needs array 'ops/fc.weight'"):
        Q.execute(tmp_path, x)
    (tmp_path / "arrays.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(Q.QuantError, match="damaged arrays file"):
        Q.execute(tmp_path, x)


def test_inputs_must_fit_the_program(cnn):
    model, graph = cnn
    with M.engine("fbgemm"):
        program = Q.read_graph(graph)
    with pytest.raises(Q.QuantError, match=r"captured with \[1, 3, 8, 8\]"):
        Q.execute(program, np.zeros((2, 3, 9, 9), np.float32))
    with pytest.raises(Q.QuantError, match="takes 1 input"):
        Q.execute(program, [np.zeros((1, 3, 8, 8), np.float32)] * 2)
    assert Q.execute(program, np.zeros((5, 3, 8, 8), np.float32)).shape == (5, 10)


def test_engines_the_executor_does_not_reproduce_are_refused(cnn):
    model, graph = cnn
    with pytest.raises(Q.QuantError, match="'onednn' is not reproduced"):
        Q.read_graph(graph, engine="onednn")


class _FloatInTheMiddle(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.requant = torch.ao.quantization.QuantStub()
        self.dequant2 = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        y = torch.sigmoid(self.dequant(self.fc1(self.quant(x))))     # float work between two quantized parts
        return torch.softmax(self.dequant2(self.fc2(self.requant(y))), dim=1)


def test_float_ops_between_quantized_parts_are_refused(tmp_path):
    from torch.ao import quantization as tq
    with M.engine("fbgemm"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _FloatInTheMiddle().eval()
        model.qconfig = tq.get_default_qconfig("fbgemm")
        tq.prepare(model, inplace=True)
        model(torch.randn(8, 4))
        tq.convert(model, inplace=True)
        graph = M.capture(model, (1, 4), "fbgemm")
        with pytest.raises(UnsupportedOpError, match=r"module `requant` \(Quantize\) at .*test_quant_export.py:\d+: "
                                                     r"it reads sigmoid, which `sigmoid` computes in float"):
            Q.read_graph(graph)
