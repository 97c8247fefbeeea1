"""Shared steps of the conversion tests: capture, save in both dialects, run on a real runtime.

The numbers always come from a real runtime (OpenCV's Caffe importer or Caffe
itself, via tracecap.runtimes) and are compared with eager PyTorch.
"""
import warnings

import numpy as np
import torch
from google.protobuf import text_format

import tracecap
from tracecap import compare, runtimes
from tracecap.mappers import caffe
from tracecap.mappers.caffe import writer
from tracecap.mappers.caffe.proto import module_for



def capture(fn, *inputs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eager = fn(*inputs)
        with tracecap.capture() as cap:
            fn(*inputs)
    return cap.graph, eager


def save_both(graph, tmp_path, stem="net"):
    paths = {}
    for dialect in caffe.DIALECTS:
        proto, model = tmp_path / f"{stem}.{dialect}.prototxt", tmp_path / f"{stem}.{dialect}.caffemodel"
        caffe.save(graph, proto, model, dialect=dialect)
        paths[dialect] = (proto, model)
    assert_dialects_differ_only_where_expected(paths)
    return paths


def run_on(runtime, graph, paths, inputs):
    proto, model = paths[runtimes.dialect_for(runtime)]
    feed = {b.name: x.detach().numpy() for b, x in zip(graph.inputs, inputs)}
    names = [b.name for b in graph.outputs]
    got = runtimes.run(proto, model, feed, runtime=runtime, blobs=names)
    return [got[n] for n in names]


def max_diff(got, want):
    """(max abs diff, the scale the tolerance is relative to) of a runtime output against a tensor."""
    want = want.detach().numpy()
    return compare.max_abs_diff(got, want), compare.scale_of(want)


def check(fn, inputs, runtime, tmp_path, rel_tol=compare.OP_TOLERANCE):
    """Convert fn and compare runtime outputs with PyTorch; return (graph, worst diff)."""
    graph, eager = capture(fn, *inputs)
    paths = save_both(graph, tmp_path)
    outs = run_on(runtime, graph, paths, inputs)
    eager = list(eager) if isinstance(eager, (list, tuple)) else [eager]
    worst = 0.0
    for got, want in zip(outs, eager):
        assert got.size == want.numel(), (got.shape, tuple(want.shape))
        diff, scale = max_diff(got, want)
        assert diff <= rel_tol * scale, f"{runtime}: max abs diff {diff:.3g} > {rel_tol} x {scale:.3g}"
        worst = max(worst, diff)
    return graph, worst


# ---- the two dialects must say the same thing ------------------------------------------------
_EQUIVALENT = {("ReLU6", "Clip")}


def _canonical_layers(dialect, proto_path, model_path):
    net = writer.load(proto_path, model_path, dialect=dialect)
    out = []
    for layer in net.layer:
        blobs = [b.SerializeToString(deterministic=True) for b in layer.blobs]  # shape + data, compared as bytes
        del layer.blobs[:]
        text = text_format.MessageToString(layer, as_one_line=True)
        if layer.type == "Pooling":
            p = layer.pooling_param
            ceil = p.ceil_mode if dialect == "opencv" else p.round_mode == module_for("bvlc").PoolingParameter.CEIL
            text = text.replace("round_mode: FLOOR", "").replace("round_mode: CEIL", "")
            text = text.replace("ceil_mode: false", "").replace("ceil_mode: true", "")
            text = " ".join(text.split()) + f" <ceil={ceil}>"
        out.append((layer.type, layer.name, text, blobs))
    return out


def assert_dialects_differ_only_where_expected(paths):
    a = _canonical_layers("bvlc", *paths["bvlc"])
    b = _canonical_layers("opencv", *paths["opencv"])
    assert len(a) == len(b)
    for (ta, na, xa, ba), (tb, nb, xb, bb) in zip(a, b):
        assert na == nb
        assert len(ba) == len(bb) and ba == bb, f"layer {na}: blobs differ"
        if ta != tb:
            assert (tb, ta) in _EQUIVALENT, f"layer {na}: bvlc {ta} vs opencv {tb}"
            continue
        assert " ".join(xa.split()) == " ".join(xb.split()), f"layer {na} differs:\n bvlc:   {xa}\n opencv: {xb}"


def rewrite_blobs(caffemodel, layer_name, change):
    """Rewrite one layer's weights in a caffemodel with the protobuf classes: ``change(list of arrays)``."""
    net = module_for("opencv").NetParameter.FromString(caffemodel.read_bytes())
    (layer,) = [l for l in net.layer if l.name == layer_name]
    arrays = [np.array(b.data, dtype=np.float32) for b in layer.blobs]
    change(arrays)
    for blob, values in zip(layer.blobs, arrays):
        del blob.data[:]
        blob.data.extend(values.tolist())
    caffemodel.write_bytes(net.SerializeToString())
