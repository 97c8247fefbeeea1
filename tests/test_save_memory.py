"""caffe.save writes weights from the tensors' own memory and makes transformed blobs only while writing.

Saving must not hold a second copy of the model: float32 contiguous weights go to the file as
read-only views of the tensors (a mapper cannot write into them), a transposed, converted or
dequantized weight is a LazyBlob made while its layer is written. The files stay byte-identical
to the reference path (the net with its blobs in the protobuf message, ``writer.save``).
"""
from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
import torch

import tracecap
from tracecap.errors import MappingError
from tracecap.mappers import caffe
from tracecap.mappers.caffe import netspec, writer
from tracecap.mappers.caffe.lazy_blob import LazyBlob
from tracecap.mappers.caffe.netspec import Layer


def capture(model, *inputs):
    with torch.no_grad(), tracecap.capture() as cap:
        model(*inputs)
    return cap.graph


class ConvBnLinear(torch.nn.Module):
    def __init__(self, width=1024):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 6 * 6, width)
        self.proj = torch.nn.Parameter(torch.randn(width, 16))   # x @ proj: written transposed

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))).flatten(1)
        return torch.mm(self.fc(y), self.proj)


def model_and_graph(dtype=torch.float32, width=1024):
    torch.manual_seed(0)
    model = ConvBnLinear(width).eval().to(dtype)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model, capture(model, torch.randn(1, 3, 8, 8, dtype=dtype))


def files(tmp_path, stem):
    return tmp_path / f"{stem}.prototxt", tmp_path / f"{stem}.caffemodel"


def reference_bytes(graph, tmp_path, dialect):
    """What the plain protobuf path writes: the net with every blob encoded into its message."""
    proto, model = files(tmp_path, f"reference.{dialect}")
    writer.save(caffe.to_net(graph, dialect), proto, model)
    return proto.read_bytes(), model.read_bytes()


def test_float32_weights_are_written_from_the_tensors_memory(tmp_path, monkeypatch):
    model, graph = model_and_graph()
    written = []
    real = writer.array_blob_pieces
    monkeypatch.setattr(writer, "array_blob_pieces", lambda arr: written.append(arr) or real(arr))
    proto, path = files(tmp_path, "net")
    caffe.save(graph, proto, path, dialect="opencv")
    for param in (model.conv.weight, model.conv.bias, model.fc.weight, model.fc.bias,
                  model.bn.running_mean, model.bn.running_var):
        source = param.detach().numpy()
        assert any(np.shares_memory(arr, source) for arr in written), "a float32 weight was copied"
    # the transposed constant is the one blob made for the file, and it is not a view of the parameter
    proj = model.proj.detach().numpy()
    assert not any(np.shares_memory(arr, proj) for arr in written)
    assert any(arr.shape == proj.T.shape and np.array_equal(arr, proj.T) for arr in written)


def test_views_handed_to_mappers_are_read_only():
    model, graph = model_and_graph()
    layers = caffe.to_layers(graph, "opencv")
    conv = next(layer for layer in layers if layer.type == "Convolution")
    weight = conv.blobs[0]
    assert isinstance(weight, np.ndarray) and np.shares_memory(weight, model.conv.weight.detach().numpy())
    with pytest.raises(ValueError, match="read-only"):
        weight[0, 0, 0, 0] = 1.0   # copy-on-write: a mapper that changes values must copy first
    fc = [layer for layer in layers if layer.type == "InnerProduct"]
    assert isinstance(fc[-1].blobs[0], LazyBlob) and fc[-1].blobs[0].shape == (16, 1024)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("dialect", caffe.DIALECTS)
def test_files_are_byte_identical_to_the_reference_path(tmp_path, dtype, dialect):
    _, graph = model_and_graph(dtype, width=64)
    proto, path = files(tmp_path, f"fast.{dialect}")
    caffe.save(graph, proto, path, dialect=dialect)
    assert (proto.read_bytes(), path.read_bytes()) == reference_bytes(graph, tmp_path, dialect)


def test_converted_weights_are_lazy():
    _, graph = model_and_graph(torch.float64, width=64)
    layers = caffe.to_layers(graph, "bvlc")
    conv = next(layer for layer in layers if layer.type == "Convolution")
    assert all(isinstance(b, LazyBlob) for b in conv.blobs)
    assert [b.shape for b in conv.blobs] == [(8, 3, 3, 3), (8,)]


def test_a_lazy_blob_is_made_once_while_written_and_not_before(tmp_path):
    calls = []

    def produce():
        calls.append("made")
        return np.arange(12, dtype=np.float64).reshape(3, 4)

    layers = [Layer("InnerProduct", "fc", ["data"], ["fc"], {"num_output": 3, "bias_term": False},
                    [LazyBlob((3, 4), produce)])]
    net, blobs = netspec.to_net(layers, name="n", inputs={"data": (1, 4)}, dialect="opencv", with_blobs=False)
    text = writer.prototxt_text(net)
    assert calls == [] and "InnerProduct" in text
    proto, path = files(tmp_path, "lazy")
    writer.save_parts(net, blobs, proto, path)
    assert calls == ["made"]
    full = netspec.to_net([Layer("InnerProduct", "fc", ["data"], ["fc"], {"num_output": 3, "bias_term": False},
                                 [np.arange(12, dtype=np.float32).reshape(3, 4)])],
                          name="n", inputs={"data": (1, 4)}, dialect="opencv")
    assert path.read_bytes() == full.SerializeToString(deterministic=True)


def test_a_lazy_blob_of_the_wrong_shape_is_a_mapping_error(tmp_path):
    layers = [Layer("Scale", "s", ["data"], ["s"], {}, [LazyBlob((4,), lambda: np.ones(5))])]
    net, blobs = netspec.to_net(layers, name="n", inputs={"data": (1, 4)}, dialect="opencv", with_blobs=False)
    proto, path = files(tmp_path, "bad")
    with pytest.raises(MappingError, match=r"shape \(5,\), declared \(4,\)"):
        writer.save_parts(net, blobs, proto, path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("existed", [True, False])
def test_a_failure_while_making_a_blob_mid_write_leaves_no_half_written_file(tmp_path, existed):
    def fail():
        raise RuntimeError("out of memory, say")

    layers = [Layer("Scale", "first", ["data"], ["first"], {}, [np.ones(1 << 18, np.float32)]),
              Layer("Scale", "second", ["first"], ["second"], {}, [LazyBlob((1 << 18,), fail)])]
    net, blobs = netspec.to_net(layers, name="n", inputs={"data": (1, 1 << 18)}, dialect="opencv", with_blobs=False)
    proto, path = files(tmp_path, "net")
    if existed:
        proto.write_bytes(b"old prototxt")
        path.write_bytes(b"old caffemodel")
    with pytest.raises(RuntimeError, match="out of memory"):
        writer.save_parts(net, blobs, proto, path)
    assert sorted(os.listdir(tmp_path)) == (["net.caffemodel", "net.prototxt"] if existed else [])
    if existed:
        assert (proto.read_bytes(), path.read_bytes()) == (b"old prototxt", b"old caffemodel")


def test_saving_allocates_far_less_than_the_weights(tmp_path):
    """numpy reports its buffers to tracemalloc: a copy of the big weight would show in the peak."""
    model, graph = model_and_graph(width=8192)   # fc: 8192 x 288 float32 = 9.4 MB
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    proto, path = files(tmp_path, "net")
    caffe.save(graph, proto, path, dialect="opencv")   # warm: imports and caches
    tracemalloc.start()
    try:
        caffe.save(graph, proto, path, dialect="opencv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    transposed = model.proj.numel() * 4   # the one blob made for the file, while written
    assert peak < transposed + 0.1 * weight_bytes, (peak, weight_bytes)


def test_reserving_space_never_leaves_extra_bytes(tmp_path):
    from tracecap import atomic
    path = tmp_path / "f.bin"
    atomic.write_files([(path, lambda write: write(b"x" * 1000), 4 << 20)])   # a wrong (too big) promise
    assert path.read_bytes() == b"x" * 1000
    atomic.write_files([(path, lambda write: write(b"y" * (3 << 20)), 2 << 20)])
    assert path.read_bytes() == b"y" * (3 << 20)


def _reserved_sizes(monkeypatch):
    from tracecap import atomic
    sizes = []
    real = atomic._reserve
    monkeypatch.setattr(atomic, "_reserve", lambda f, size: (sizes.append(size), real(f, size)))
    return sizes


@pytest.mark.parametrize("shapes", [[(300, 1000)], [(2, 3, 4, 5, 6, 7, 8, 9)] * 400 + [(1 << 18,)],
                                    [(1 << 18,), (), (0,), (128, 2048)]])
def test_the_whole_caffemodel_is_reserved(tmp_path, monkeypatch, shapes):
    """ext4 writes a file renamed over an existing one back to disk at once unless all its blocks are
    allocated: the reservation must cover the file, headers and framing included (tracecap.atomic)."""
    layers, bottom = [], "data"
    rng = np.random.default_rng(0)
    for i, shape in enumerate(shapes):
        layers.append(Layer("Scale", f"scale{i}", [bottom], [f"s{i}"], {"bias_term": False},
                            [rng.standard_normal(shape).astype(np.float32)]))
        bottom = f"s{i}"
    parts = netspec.to_net(layers, name="n" * 300, inputs={"data": (1, 3, 4, 4)}, dialect="opencv", with_blobs=False)
    sizes = _reserved_sizes(monkeypatch)
    for round in range(2):  # a new file, then one replacing it
        writer.save_parts(parts.net, parts.blobs, tmp_path / "n.prototxt", tmp_path / "n.caffemodel")
    data = (tmp_path / "n.caffemodel").read_bytes()
    assert data == writer.caffemodel_bytes(parts.net, parts.blobs)
    assert len(sizes) == 2 and all(s >= len(data) for s in sizes), (sizes, len(data))
    assert sizes[0] - len(data) < 64 * (len(shapes) + 1) + 10 * sum(len(s) for s in shapes)


def test_a_captured_model_is_reserved_whole(tmp_path, monkeypatch):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(64 * 30 * 30, 80)).eval()
    with torch.no_grad(), tracecap.capture() as cap:
        model(torch.randn(1, 3, 32, 32))
    sizes = _reserved_sizes(monkeypatch)
    caffe.save(cap.graph, tmp_path / "n.prototxt", tmp_path / "n.caffemodel", dialect="opencv")
    assert sizes and sizes[0] >= (tmp_path / "n.caffemodel").stat().st_size
