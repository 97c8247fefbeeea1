"""netspec (layers -> NetParameter) and writer (NetParameter <-> files)."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from tracecap import MappingError
from tracecap import atomic
from tracecap.mappers.caffe import netspec, wire, writer
from tracecap.mappers.caffe.netspec import Layer, layer_types, param_field, to_net
from tracecap.mappers.caffe.proto import DIALECTS, module_for

RNG = np.random.default_rng(1234)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def pool_params(dialect, ceil):
    mode = {"ceil_mode": ceil} if dialect == "opencv" else {"round_mode": "CEIL" if ceil else "FLOOR"}
    return {"pool": "MAX", "kernel_size": 2, "stride": 2, **mode}


def zoo(dialect):
    """A net touching most layer families, nested messages, enums and blobs."""
    layers = [
        Layer("Convolution", "conv1", ["data"], ["conv1"],
              {"num_output": 4, "kernel_size": [3], "pad": [1], "stride": [1], "dilation": [1],
               "group": 1, "bias_term": True, "weight_filler": {"type": "xavier"}},
              [rand(4, 3, 3, 3), rand(4)]),
        Layer("BatchNorm", "bn1", ["conv1"], ["conv1"], {"use_global_stats": True, "eps": 1e-3},
              [rand(4), np.abs(rand(4)), np.ones(1, np.float32)]),
        Layer("Scale", "scale1", ["conv1"], ["conv1"], {"bias_term": True}, [rand(4), rand(4)]),
        Layer("ReLU", "relu1", ["conv1"], ["conv1"], {"negative_slope": 0.1}),
        Layer("Pooling", "pool1", ["conv1"], ["pool1"], pool_params(dialect, ceil=False)),
        Layer("Deconvolution", "up", ["pool1"], ["up"],
              {"num_output": 4, "kernel_size": [2], "stride": [2], "group": 4, "bias_term": False},
              [np.ones((4, 1, 2, 2), np.float32)]),
        Layer("Slice", "slice", ["up"], ["s0", "s1"], {"axis": 1, "slice_point": [2]}),
        Layer("Eltwise", "sum", ["s0", "s1"], ["sum"], {"operation": "SUM", "coeff": [1.0, -0.5]}),
        Layer("Concat", "cat", ["sum", "s1"], ["cat"], {"axis": 1}),
        Layer("Permute", "perm", ["cat"], ["perm"], {"order": [0, 2, 3, 1]}),
        Layer("Reshape", "resh", ["perm"], ["resh"], {"shape": {"dim": [0, -1]}}),
        Layer("InnerProduct", "fc", ["resh"], ["fc"], {"num_output": 3, "axis": 1}, [rand(3, 256), rand(3)]),
        Layer("PReLU", "prelu", ["fc"], ["fc"], {"channel_shared": False}, [rand(3)]),
        Layer("Power", "pow", ["fc"], ["pow"], {"power": 2.0, "scale": 0.5, "shift": 1}),
        Layer("Softmax", "prob", ["pow"], ["prob"], {"axis": 1, "engine": "CAFFE"}),
        Layer("Dropout", "drop", ["prob"], ["prob"], {"dropout_ratio": 0.25},
              extra={"include": [{"phase": "TEST"}], "loss_weight": [0.0]}),
        Layer("Normalize", "l2", ["cat"], ["l2"], {"across_spatial": False, "channel_shared": False},
              [rand(4)]),
        Layer("AbsVal", "abs", ["l2"], ["abs"]),
    ]
    return layers


def build(dialect, layers=None, **kw):
    return to_net(zoo(dialect) if layers is None else layers, name=kw.pop("name", "zoo"),
                  inputs=kw.pop("inputs", {"data": (1, 3, 8, 8)}), dialect=dialect, **kw)


def files(tmp_path, stem="net"):
    return tmp_path / f"{stem}.prototxt", tmp_path / f"{stem}.caffemodel"


# ------------------------------------------------------------ round trips


@pytest.mark.parametrize("dialect", DIALECTS)
def test_round_trip(tmp_path, dialect):
    layers = zoo(dialect)
    net = build(dialect, layers)
    proto, model = files(tmp_path)
    writer.save(net, proto, model)
    back = writer.load(proto, model, dialect=dialect)
    assert back == net
    assert [layer.name for layer in back.layer] == ["data"] + [layer.name for layer in layers]
    assert list(back.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    by_name = {layer.name: layer for layer in back.layer}
    for layer in layers:
        blobs = by_name[layer.name].blobs
        assert len(blobs) == len(layer.blobs)
        for bp, arr in zip(blobs, layer.blobs):
            assert tuple(bp.shape.dim) == arr.shape
            np.testing.assert_array_equal(np.asarray(bp.data, np.float32), arr.ravel())
    text_only = writer.load(proto, dialect=dialect)
    assert all(len(layer.blobs) == 0 for layer in text_only.layer)
    assert "blobs" not in proto.read_text() and "data: " not in proto.read_text()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_caffemodel_is_protobufs_canonical_encoding(tmp_path, dialect):
    net = build(dialect)
    proto, model = files(tmp_path)
    writer.save(net, proto, model)
    assert model.read_bytes() == net.SerializeToString(deterministic=True)
    assert writer.caffemodel_bytes(net) == model.read_bytes()


def test_float_bits_survive(tmp_path):
    special = np.array([0.0, -0.0, 1.0, -1.5, np.inf, -np.inf, np.nan, 1e-45, 3.4028235e38,
                        np.float32(0.1), 7e-39], dtype=np.float32)
    doubles = np.array([0.1, 1 / 3, 1e-300, 2.5], dtype=np.float64)
    ints = np.arange(-3, 3, dtype=np.int64).reshape(2, 3)
    layers = [Layer("Scale", "s", ["data"], ["s"], {"bias_term": True}, [special, doubles]),
              Layer("Bias", "b", ["s"], ["b"], {}, [ints]),
              Layer("Scale", "scalar", ["b"], ["c"], {"num_axes": 0}, [np.float32(2.0)]),
              Layer("Scale", "empty", ["c"], ["d"], {}, [np.zeros((0, 3), np.float32)])]
    net = to_net(layers, name="f", inputs={"data": (1, 11)}, dialect="opencv")
    proto, model = files(tmp_path)
    writer.save(net, proto, model)
    back = {layer.name: layer for layer in writer.load(proto, model).layer}

    def bits(values):
        return np.asarray(values, dtype=np.float32).view(np.uint32)

    np.testing.assert_array_equal(bits(back["s"].blobs[0].data), special.view(np.uint32))
    np.testing.assert_array_equal(bits(back["s"].blobs[1].data), doubles.astype(np.float32).view(np.uint32))
    np.testing.assert_array_equal(np.asarray(back["b"].blobs[0].data), ints.ravel())
    assert list(back["b"].blobs[0].shape.dim) == [2, 3]
    assert list(back["scalar"].blobs[0].shape.dim) == [] and list(back["scalar"].blobs[0].data) == [2.0]
    assert list(back["empty"].blobs[0].shape.dim) == [0, 3] and len(back["empty"].blobs[0].data) == 0


def test_save_handles_nets_built_by_hand_and_unknown_fields(tmp_path):
    pb = module_for("bvlc")
    net = pb.NetParameter(name="hand")
    layer = net.layer.add(name="w", type="Parameter")
    layer.parameter_param.shape.dim.extend([2])
    blob = layer.blobs.add(num=1, channels=1, height=1, width=2)  # legacy geometry
    blob.data.extend([1.0, 2.0])
    blob.diff.extend([3.0])
    layer.MergeFromString(b"\xa8\x1f\x05")  # field 500, a fork's field unknown to bvlc
    proto, model = files(tmp_path)
    writer.save(net, proto, model)
    assert model.read_bytes() == net.SerializeToString(deterministic=True)
    assert pb.NetParameter.FromString(model.read_bytes()) == net


# ------------------------------------------------------------ determinism


@pytest.mark.parametrize("dialect", DIALECTS)
def test_deterministic(tmp_path, dialect):
    layers = zoo(dialect)
    outputs = []
    for run in range(2):
        net = build(dialect, layers)  # a fresh NetParameter from the same description
        proto, model = files(tmp_path, f"run{run}")
        writer.save(net, proto, model)
        first = (proto.read_bytes(), model.read_bytes())
        writer.save(net, proto, model)  # overwriting gives the same bytes again
        assert (proto.read_bytes(), model.read_bytes()) == first
        outputs.append(first)
    assert outputs[0] == outputs[1]


# --------------------------------------------------------------- atomicity


def _listing(path):
    return sorted(os.listdir(path))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("existed", [True, False])
def test_failure_mid_write_leaves_nothing_behind(tmp_path, monkeypatch, exc, existed):
    proto, model = files(tmp_path)
    if existed:
        proto.write_bytes(b"old prototxt")
        model.write_bytes(b"old caffemodel")
    before = _listing(tmp_path)
    real = writer._write_caffemodel

    def half_then_fail(net, write):
        pieces = []
        real(net, pieces.append)
        write(b"".join(pieces)[:1000])
        raise exc("disk on fire")

    monkeypatch.setattr(writer, "_write_caffemodel", half_then_fail)
    with pytest.raises(exc, match="disk on fire"):
        writer.save(build("opencv"), proto, model)
    assert _listing(tmp_path) == before
    if existed:
        assert proto.read_bytes() == b"old prototxt" and model.read_bytes() == b"old caffemodel"


def _save_via(entry, proto, model):
    if entry == "save":
        writer.save(build("opencv"), proto, model)
    else:
        net, blobs = build("opencv", with_blobs=False)
        writer.save_parts(net, blobs, proto, model)


@pytest.mark.parametrize("entry", ["save", "save_parts"])
@pytest.mark.parametrize("existed", [True, False])
def test_failure_replacing_second_file_restores_the_first(tmp_path, monkeypatch, existed, entry):
    proto, model = files(tmp_path)
    if existed:
        proto.write_bytes(b"old prototxt")
        model.write_bytes(b"old caffemodel")
    before = _listing(tmp_path)
    real_replace = os.replace

    def flaky_replace(src, dst):
        if os.path.basename(str(src)).startswith(".net.prototxt.") and str(src).endswith(".tmp"):
            raise PermissionError("cannot replace the prototxt")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky_replace)
    with pytest.raises(PermissionError):
        _save_via(entry, proto, model)
    monkeypatch.undo()
    assert _listing(tmp_path) == before
    if existed:
        assert proto.read_bytes() == b"old prototxt" and model.read_bytes() == b"old caffemodel"


def test_file_modes(tmp_path):
    proto, model = files(tmp_path)
    writer.save(build("opencv"), proto, model)
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(model.stat().st_mode) == 0o666 & ~mask
    os.chmod(proto, 0o640)
    writer.save(build("opencv"), proto, model, fsync=True)
    assert stat.S_IMODE(proto.stat().st_mode) == 0o640


def test_same_path_for_both_files_is_refused(tmp_path):
    with pytest.raises(ValueError, match="same"):
        writer.save(build("opencv"), tmp_path / "x", tmp_path / "x")
    assert _listing(tmp_path) == []


def test_load_refuses_weights_for_missing_layers(tmp_path):
    net = build("opencv")
    proto, model = files(tmp_path)
    writer.save(net, proto, model)
    proto.write_text('name: "other"\n')
    with pytest.raises(ValueError, match="conv1"):
        writer.load(proto, model)


# ----------------------------------------------------------------- dialects


def test_pooling_rounding_field_per_dialect(tmp_path):
    for dialect, ceil, text in [("opencv", False, "ceil_mode: false"), ("opencv", True, "ceil_mode: true"),
                                ("bvlc", False, "round_mode: FLOOR"), ("bvlc", True, "round_mode: CEIL")]:
        layers = [Layer("Pooling", "p", ["data"], ["p"], pool_params(dialect, ceil))]
        net = to_net(layers, name="p", inputs={"data": (1, 1, 5, 5)}, dialect=dialect)
        assert text in writer.prototxt_text(net)
    # the other dialect's spelling is refused, naming the field
    with pytest.raises(MappingError, match="round_mode"):
        to_net([Layer("Pooling", "p", ["data"], ["p"], {"round_mode": "FLOOR"})],
               name="p", inputs={"data": (1, 1, 5, 5)}, dialect="opencv")
    with pytest.raises(MappingError, match="ceil_mode"):
        to_net([Layer("Pooling", "p", ["data"], ["p"], {"ceil_mode": False})],
               name="p", inputs={"data": (1, 1, 5, 5)}, dialect="bvlc")


def test_pooling_field_13_means_the_opposite_across_dialects():
    """Why one message type cannot serve both: FLOOR (1) reads back as ceil_mode: true."""
    bvlc, opencv = module_for("bvlc"), module_for("opencv")
    floor = bvlc.PoolingParameter(round_mode=bvlc.PoolingParameter.FLOOR).SerializeToString()
    assert opencv.PoolingParameter.FromString(floor).ceil_mode is True
    no_ceil = opencv.PoolingParameter(ceil_mode=False).SerializeToString()
    assert bvlc.PoolingParameter.FromString(no_ceil).round_mode == bvlc.PoolingParameter.CEIL


def test_layer_types_per_dialect():
    bvlc, opencv = layer_types("bvlc"), layer_types("opencv")
    assert bvlc["Clip"] == "clip_param" and bvlc["Swish"] == "swish_param"
    assert "Clip" not in opencv and "Swish" not in opencv
    for t in ("ReLU6", "HardSigmoid", "HardSwish"):
        assert opencv[t] is None and t not in bvlc
    for types in (bvlc, opencv):
        assert types["Permute"] == "permute_param" and types["Normalize"] == "norm_param"
        assert types["AbsVal"] is None and types["Input"] == "input_param"


@pytest.mark.parametrize("layer_type, field", [
    ("Convolution", "convolution_param"), ("Deconvolution", "convolution_param"),
    ("InnerProduct", "inner_product_param"), ("ReLU", "relu_param"), ("PReLU", "prelu_param"),
    ("BatchNorm", "batch_norm_param"), ("ArgMax", "argmax_param"), ("TanH", "tanh_param"),
    ("LRN", "lrn_param"), ("Normalize", "norm_param"), ("Permute", "permute_param"),
    ("Clip", "clip_param"), ("ELU", "elu_param"), ("Eltwise", "eltwise_param"),
])
def test_param_field(layer_type, field):
    assert param_field(layer_type) == field


def test_param_field_errors():
    with pytest.raises(MappingError, match="'Relu'"):
        param_field("Relu")
    with pytest.raises(MappingError, match="no parameters"):
        param_field("AbsVal")
    with pytest.raises(MappingError, match="opencv"):
        param_field("Clip", "opencv")
    assert param_field("Clip", "bvlc") == "clip_param"


# ------------------------------------------------------------------ errors


def one(layer, dialect="opencv", inputs=None):
    return to_net([layer], name="e", inputs=inputs or {"data": (1, 3, 4, 4)}, dialect=dialect)


@pytest.mark.parametrize("layer, dialect, words", [
    (Layer("Convolution", "c", ["data"], ["c"], {"num_outputs": 3}), "opencv",
     ["'c'", "Convolution", "num_outputs", "num_output"]),
    (Layer("Reshape", "r", ["data"], ["r"], {"shape": {"dims": [1]}}), "bvlc", ["'r'", "Reshape", "shape.dims"]),
    (Layer("Convolution", "c", ["data"], ["c"], {"num_output": "8"}), "opencv", ["'c'", "num_output", "uint32"]),
    (Layer("Convolution", "c", ["data"], ["c"], {"num_output": 8.0}), "opencv", ["num_output"]),
    (Layer("Convolution", "c", ["data"], ["c"], {"num_output": -1}), "opencv", ["num_output", "out of range"]),
    (Layer("Convolution", "c", ["data"], ["c"], {"bias_term": 1}), "opencv", ["bias_term", "bool"]),
    (Layer("Convolution", "c", ["data"], ["c"], {"kernel_size": 3}), "opencv", ["kernel_size", "repeated"]),
    (Layer("Convolution", "c", ["data"], ["c"], {"kernel_size": [3, "x"]}), "opencv", ["kernel_size[1]"]),
    (Layer("Convolution", "c", ["data"], ["c"], {"weight_filler": "xavier"}), "opencv", ["weight_filler"]),
    (Layer("Pooling", "p", ["data"], ["p"], {"kernel_size": [3]}), "opencv", ["'p'", "Pooling", "kernel_size"]),
    (Layer("Pooling", "p", ["data"], ["p"], {"pool": "MIN"}), "opencv", ["pool", "'MIN'", "MAX=0", "AVE=1"]),
    (Layer("Pooling", "p", ["data"], ["p"], {"pool": 7}), "opencv", ["pool", "PoolMethod"]),
    (Layer("Pooling", "p", ["data"], ["p"], {"pool": True}), "opencv", ["pool"]),
    (Layer("ReLU", "r", ["data"], ["r"], {"negative_slope": "0.1"}), "opencv", ["negative_slope", "float"]),
    (Layer("ReLU", "r", ["data"], ["r"], {"negative_slope": 1e39}), "opencv", ["negative_slope", "float32"]),
    (Layer("ReLU", "r", ["data"], ["r"], {"negative_slope": None}), "opencv", ["negative_slope", "None"]),
    (Layer("ReLU", "r", ["data"], ["r"], ["negative_slope"]), "opencv", ["'r'", "relu_param must be a dict"]),
    (Layer("Relu", "r", ["data"], ["r"]), "opencv", ["'r'", "unknown layer type", "'Relu'"]),
    (Layer("Clip", "clip", ["data"], ["clip"], {"min": 0.0, "max": 6.0}), "opencv", ["'clip'", "'Clip'"]),
    (Layer("Clip", "clip", ["data"], ["clip"], {"min": 0.0}), "bvlc", ["'clip'", "Clip", "max"]),
    (Layer("ReLU6", "r6", ["data"], ["r6"], {"threshold": 6.0}), "opencv", ["'r6'", "ReLU6", "no parameters"]),
    (Layer("ReLU", "r", ["data"], ["r"], extra={"blobs": []}), "opencv", ["'r'", "blobs"]),
    (Layer("ReLU", "r", ["data"], ["r"], extra={"relu_param": {}}), "opencv", ["relu_param"]),
    (Layer("ReLU", "r", ["data"], ["r"], extra={"includes": []}), "opencv", ["'r'", "includes"]),
    (Layer("ReLU", "r", ["data"], ["r"], extra={"include": [{"phase": "VAL"}]}), "opencv", ["include[0].phase"]),
    (Layer("ReLU", "r", ["nowhere"], ["r"]), "opencv", ["'r'", "bottom", "'nowhere'"]),
    (Layer("ReLU", "r", ["data"], ["data2", ""]), "opencv", ["'r'", "tops"]),
    (Layer("ReLU", "", ["data"], ["r"]), "opencv", ["name"]),
    (Layer("Scale", "s", ["data"], ["s"], {}, [np.array(["a"])]), "opencv", ["'s'", "blob 0", "dtype"]),
    (Layer("Scale", "s", ["data"], ["s"], {}, [rand(3), np.ones(3, complex)]), "opencv", ["blob 1", "complex"]),
])
def test_mapping_errors_name_layer_and_field(layer, dialect, words):
    with pytest.raises(MappingError) as err:
        one(layer, dialect)
    for word in words:
        assert word in str(err.value)


def test_graph_errors():
    relu = Layer("ReLU", "r", ["data"], ["r"])
    with pytest.raises(MappingError, match="'r' already exists"):
        to_net([relu, Layer("ReLU", "r", ["r"], ["r2"])], name="g", inputs={"data": (1, 2)}, dialect="opencv")
    with pytest.raises(MappingError, match="top 'r' is already produced"):
        to_net([relu, Layer("Sigmoid", "s", ["data"], ["r"])], name="g", inputs={"data": (1, 2)},
               dialect="opencv")
    with pytest.raises(MappingError, match="input 'data'"):
        to_net([], name="g", inputs={"data": (1, 0)}, dialect="opencv")
    with pytest.raises(MappingError, match="netspec.Layer"):
        to_net([("ReLU", "r")], name="g", inputs={"data": (1, 2)}, dialect="opencv")
    with pytest.raises(MappingError, match="dialect"):
        to_net([], name="g", inputs={}, dialect="caffe2")
    # in place is fine, and so are enums by number and numpy scalars
    net = to_net([relu, Layer("ReLU", "r_inplace", ["r"], ["r"]),
                  Layer("Eltwise", "e", ["r", "data"], ["e"], {"operation": np.int64(0)}),
                  Layer("Power", "p", ["e"], ["p"], {"power": np.float32(2)})],
                 name="g", inputs={"data": (np.int64(1), 2)}, dialect="opencv")
    assert net.layer[3].eltwise_param.operation == 0 and net.layer[4].power_param.power == 2.0


# -------------------------------------------------------------- OpenCV runs it


def test_opencv_runs_a_saved_net_with_numpys_numbers(tmp_path):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the dev/verify extra) is absent")
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(7)  # its own generator: the result must not depend on test order

    def draw(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w1, b1 = draw(4, 3, 3, 3), draw(4)
    w2, b2 = draw(5, 4 * 4 * 4), draw(5)
    layers = [
        Layer("Convolution", "conv", ["data"], ["conv"], {"num_output": 4, "kernel_size": [3], "pad": [1]},
              [w1, b1]),
        # 9x9 -> 4x4 only when rounding down: shows ceil_mode reached OpenCV
        Layer("Pooling", "pool", ["conv"], ["pool"], {"pool": "MAX", "kernel_size": 2, "stride": 2,
                                                      "ceil_mode": False}),
        Layer("ReLU", "relu", ["pool"], ["pool"]),
        Layer("InnerProduct", "fc", ["pool"], ["fc"], {"num_output": 5}, [w2, b2]),
    ]
    net = to_net(layers, name="small", inputs={"data": (2, 3, 9, 9)}, dialect="opencv")
    proto, model = files(tmp_path)
    writer.save(net, proto, model)

    x = draw(2, 3, 9, 9)
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cvnet.setInput(x)
    got = cvnet.forward("fc")

    t = torch.from_numpy
    y = F.conv2d(t(x), t(w1), t(b1), padding=1)
    y = F.relu(F.max_pool2d(y, 2, 2, ceil_mode=False))
    want = F.linear(y.flatten(1), t(w2), t(b2)).numpy()
    assert got.shape == want.shape == (2, 5)
    assert np.max(np.abs(got - want)) <= 1e-5 * max(1.0, np.abs(want).max())  # the project's per-op tolerance


def test_opencv_reads_every_field_the_zoo_uses(tmp_path):
    """The opencv dialect's prototxt parses in OpenCV, fork numbers 202/206 included."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the dev/verify extra) is absent")
    proto, model = files(tmp_path)
    writer.save(build("opencv"), proto, model)
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cvnet.setInput(rand(1, 3, 8, 8))
    prob, perm, l2 = cvnet.forward(["prob", "perm", "l2"])
    assert prob.shape == (1, 3) and np.allclose(prob.sum(), 1.0, atol=1e-5)
    assert perm.shape == (1, 8, 8, 4)  # Permute's order arrived
    assert l2.shape == (1, 4, 8, 8)


# ------------------------------------------- blobs beside the net (save_parts)
# (save_parts: weights written straight from their arrays)


def odd_arrays():
    """Arrays that are not float32 little-endian C order, and awkward shapes."""
    big_endian = rand(4, 3, 3, 3).astype(">f4")
    transposed = rand(3, 3, 3, 4).transpose(3, 2, 0, 1)           # non-contiguous 4-D
    strided = rand(2, 4, 6).astype(">f8")[:, :, ::2]                 # big-endian float64, strided
    assert not transposed.flags.c_contiguous and not strided.flags.c_contiguous
    return {
        "conv": [big_endian, rand(4).astype(np.float64)],
        "conv_t": [transposed],
        "scale": [rand(8)[::2], rand(4).astype(">f4")],                 # 1-D strided, 1-D big-endian
        "bias": [strided],
        "empty": [np.zeros((0, 3), np.float32), np.zeros(0, np.float32)],
        "scalar": [np.float32(2.5)],
        "ints": [np.arange(-3, 3, dtype=np.int16).reshape(2, 3)],
        "prelu": [np.asfortranarray(rand(4, 1))[:, 0]],
    }


def parts_layers(dialect):
    a = odd_arrays()
    return zoo(dialect) + [
        Layer("Convolution", "conv2", ["abs"], ["conv2"], {"num_output": 4, "kernel_size": [3]}, a["conv"]),
        Layer("Convolution", "conv_t", ["conv2"], ["conv2"],
              {"num_output": 4, "kernel_size": [3], "pad": [1], "bias_term": False}, a["conv_t"]),
        Layer("Scale", "scale2", ["conv2"], ["conv2"], {"bias_term": True}, a["scale"]),
        Layer("Bias", "bias2", ["conv2"], ["bias2"], {}, a["bias"]),
        Layer("Scale", "empty", ["bias2"], ["empty"], {}, a["empty"]),
        Layer("Scale", "scalar", ["empty"], ["scalar"], {"num_axes": 0}, a["scalar"]),
        Layer("Bias", "ints", ["scalar"], ["ints"], {}, a["ints"]),
        Layer("PReLU", "prelu2", ["ints"], ["ints"], {}, a["prelu"]),
        Layer("ReLU", "relu_last", ["ints"], ["ints"]),
    ]


def by_protobuf(net, blobs):
    """The net with ``blobs`` put in through protobuf's own API, element by element."""
    full = type(net)()
    full.CopyFrom(net)
    for layer, arrays in zip(full.layer, blobs):
        for arr in arrays:
            bp = layer.blobs.add()
            bp.shape.dim.extend(np.shape(arr))
            bp.data.extend(np.asarray(arr, dtype=np.float32).ravel().tolist())
    return full


@pytest.mark.parametrize("dialect", DIALECTS)
def test_save_parts_writes_the_full_nets_bytes(tmp_path, dialect):
    layers = parts_layers(dialect)
    full = build(dialect, layers)
    net, blobs = build(dialect, layers, with_blobs=False)
    assert all(len(layer.blobs) == 0 for layer in net.layer)
    assert len(blobs) == len(net.layer) == len(full.layer)
    assert [len(b) for b in blobs] == [len(layer.blobs) for layer in full.layer]
    for arrays, layer in zip(blobs[1:], layers):  # blobs[0] belongs to the Input layer
        assert len(arrays) == len(layer.blobs)
        for arr, src in zip(arrays, layer.blobs):
            assert arr.dtype == np.dtype("<f4") and arr.flags.c_contiguous and arr.shape == np.shape(src)
            np.testing.assert_array_equal(arr, np.asarray(src, np.float32))

    reference = by_protobuf(net, [[np.asarray(a) for a in layer.blobs] for layer in
                                  [Layer("Input", "data", [], ["data"])] + layers])
    assert reference == full
    expected = full.SerializeToString(deterministic=True)
    assert reference.SerializeToString(deterministic=True) == expected

    proto, model = files(tmp_path, "parts")
    writer.save_parts(net, blobs, proto, model)
    assert model.read_bytes() == expected
    assert writer.caffemodel_bytes(net, blobs) == expected
    full_proto, full_model = files(tmp_path, "full")
    writer.save(full, full_proto, full_model)
    assert (proto.read_bytes(), model.read_bytes()) == (full_proto.read_bytes(), full_model.read_bytes())
    assert writer.load(proto, model, dialect=dialect) == full
    assert sorted(os.listdir(tmp_path)) == ["full.caffemodel", "full.prototxt", "parts.caffemodel",
                                            "parts.prototxt"]


def test_save_parts_mixes_with_blobs_in_the_net_and_unknown_fields(tmp_path):
    net, blobs = build("bvlc", with_blobs=False)
    conv = next(i for i, layer in enumerate(net.layer) if layer.name == "conv1")
    fc = next(i for i, layer in enumerate(net.layer) if layer.name == "fc")
    for arr in blobs[fc]:  # this layer's weights live in the net itself
        net.layer[fc].blobs.add().MergeFromString(b"".join(wire.array_blob_pieces(arr)))
    full = by_protobuf(net, blobs[:fc] + [[]] + blobs[fc + 1:])
    blobs[fc] = []
    assert writer.caffemodel_bytes(net, blobs) == full.SerializeToString(deterministic=True)

    net.layer[conv].MergeFromString(b"\xa8\x1f\x05")  # a fork's field, unknown to bvlc
    full.layer[conv].MergeFromString(b"\xa8\x1f\x05")
    assert writer.caffemodel_bytes(net, blobs) == full.SerializeToString(deterministic=True)
    net.MergeFromString(b"\xa8\x1f\x07")
    full.MergeFromString(b"\xa8\x1f\x07")
    proto, model = files(tmp_path)
    writer.save_parts(net, blobs, proto, model)
    assert model.read_bytes() == full.SerializeToString(deterministic=True)


def test_save_parts_refuses_blobs_that_do_not_fit(tmp_path):
    net, blobs = build("opencv", with_blobs=False)
    proto, model = files(tmp_path)
    with pytest.raises(ValueError, match="entries"):
        writer.save_parts(net, blobs[:-1], proto, model)
    conv = next(i for i, b in enumerate(blobs) if b)
    both = type(net)()
    both.CopyFrom(net)
    both.layer[conv].blobs.add()
    with pytest.raises(ValueError, match="both"):
        writer.save_parts(both, blobs, proto, model)
    blobs[conv] = [np.array(["x"])]
    with pytest.raises(MappingError, match="blob 0"):
        writer.save_parts(net, blobs, proto, model)
    assert _listing(tmp_path) == []


def test_to_net_without_blobs_checks_them_the_same():
    with pytest.raises(MappingError, match="'s'.*blob 1.*complex"):
        to_net([Layer("Scale", "s", ["data"], ["s"], {}, [rand(3), np.ones(3, complex)])],
               name="e", inputs={"data": (1, 3)}, dialect="opencv", with_blobs=False)


def test_caffe_save_writes_what_to_net_and_writer_save_write(tmp_path):
    torch = pytest.importorskip("torch")
    import tracecap
    from tracecap.mappers import caffe

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)).eval()
    with torch.no_grad(), tracecap.capture() as cap:
        model(torch.randn(1, 3, 8, 8))
    for dialect in DIALECTS:
        proto, model_path = files(tmp_path, f"fast.{dialect}")
        net = caffe.save(cap.graph, proto, model_path, dialect=dialect)
        ref_proto, ref_model = files(tmp_path, f"ref.{dialect}")
        full = caffe.to_net(cap.graph, dialect)
        writer.save(full, ref_proto, ref_model)
        assert proto.read_bytes() == ref_proto.read_bytes()
        assert model_path.read_bytes() == ref_model.read_bytes() == full.SerializeToString(deterministic=True)
        assert any(len(layer.blobs) for layer in full.layer)
        assert all(len(layer.blobs) == 0 for layer in net.layer)  # the weights went straight to the file
        assert [layer.name for layer in net.layer] == [layer.name for layer in full.layer]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("existed", [True, False])
def test_save_parts_failure_mid_write_leaves_nothing_behind(tmp_path, monkeypatch, exc, existed):
    proto, model = files(tmp_path)
    if existed:
        proto.write_bytes(b"old prototxt")
        model.write_bytes(b"old caffemodel")
    before = _listing(tmp_path)
    real = writer.array_blob_pieces
    calls = []

    def fail_on_the_fifth_blob(arr):  # after several layers' bytes reached the file
        calls.append(arr)
        if len(calls) == 5:
            raise exc("disk on fire")
        return real(arr)

    net, blobs = build("opencv", with_blobs=False)
    monkeypatch.setattr(writer, "array_blob_pieces", fail_on_the_fifth_blob)
    with pytest.raises(exc, match="disk on fire"):
        writer.save_parts(net, blobs, proto, model)
    assert len(calls) == 5
    assert _listing(tmp_path) == before
    if existed:
        assert proto.read_bytes() == b"old prototxt" and model.read_bytes() == b"old caffemodel"




@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 300, 16383, 16384, 2 ** 21 - 1, 2 ** 21, 2 ** 31 + 5,
                                   2 ** 63 - 1])
def test_varints_are_protobufs(value):
    pb = module_for("opencv")
    assert wire.encode_varint(value) == pb.BlobShape(dim=[value]).SerializeToString()[2:]


@pytest.mark.parametrize("shape", [(), (1,), (127, 1), (128, 3), (5, 70000, 2), (0, 3)])
def test_blob_pieces_are_protobufs(shape):
    pb = module_for("opencv")
    arr = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    blob = pb.BlobProto()
    blob.MergeFromString(b"".join(wire.array_blob_pieces(arr)))
    expected = pb.BlobProto(shape=pb.BlobShape(dim=list(shape)), data=arr.reshape(-1).tolist())
    assert b"".join(wire.array_blob_pieces(arr)) == expected.SerializeToString(deterministic=True)
    assert list(blob.shape.dim) == list(shape)
