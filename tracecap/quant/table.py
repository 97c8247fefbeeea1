"""The quantization table ``caffe.save`` writes next to a Caffe model made from a quantized graph.

``<model>.quant.json`` names every Caffe blob that PyTorch held quantized with its dtype, scale
and zero point, and every Caffe layer made from a quantized kernel with its weight scales and
zero points (per channel where PyTorch has them) - what a runtime that re-quantizes the float
net needs, in PyTorch's convention ``real = (code - zero_point) * scale``.

No ncnn ``.table`` is written: ncnn's int8 calibration tables are symmetric (one number per blob,
``int8 = round(real * table_scale)``, i.e. ``table_scale = 1 / scale`` and no zero point), and
PyTorch's activations are asymmetric quint8 (after a ReLU the zero point is 0 in uint8, -128 in
int8 terms); such a table would silently shift every activation. The JSON gives ``1 / scale``
as ``ncnn_scale`` only where the zero point is symmetric (weights, zero-point-0 qint8 tensors).
"""
from __future__ import annotations

import json
from pathlib import Path

from tracecap.quant.facts import is_quantized, unpack_conv, unpack_linear

FORMAT = "tracecap-caffe-quant-table"

CONVENTIONS = {
    "pytorch": "real = (code - zero_point) * scale; code = clamp(round(real / scale) + zero_point, qmin, qmax); "
               "quint8 codes 0..255, qint8 -128..127",
    "caffe": "the Caffe net computes in float32 with dequantized weights and float biases; PyTorch's quantize and "
             "dequantize are identity Power layers, so activations are not rounded to the grid",
    "ncnn": "ncnn_scale = 1 / scale, given only for symmetric tensors (zero point 0 in int8 terms); ncnn's int8 "
            "tables have no zero point, so asymmetric quint8 activations have none and no .table file is written",
}


def path_for(caffemodel):
    p = Path(caffemodel)
    return p.with_name((p.name[:-len(".caffemodel")] if p.name.endswith(".caffemodel") else p.name) + ".quant.json")


def build(graph, layers, caffemodel=None):
    """The table (JSON-ready dict) for ``graph`` mapped to ``layers`` (``to_layers``' output)."""
    import torch
    blobs = {}
    for blob in graph.blobs.values():
        q = blob.quant
        if q is None or blob.is_constant:
            continue
        entry = {"dtype": str(q.dtype).replace("torch.", ""), "scheme": q.scheme, "scale": q.scale,
                 "zero_point": q.zero_point}
        if q.scheme == "per_tensor_affine" and (q.dtype is torch.qint8 and q.zero_point == 0):
            entry["ncnn_scale"] = 1.0 / q.scale
        blobs[blob.name] = entry
    out_layers = {}
    for layer in layers:
        node = getattr(layer, "origin", None)
        if node is None or not node.op.startswith("quantized::") or not layer.blobs:
            continue
        weight = _weight_of(node)
        if weight is None:
            continue
        out_layers[layer.name] = {"node": node.name, "pytorch_op": node.op, "type": layer.type,
                                  "bottoms": list(layer.bottoms), "tops": list(layer.tops),
                                  "weight": _weight_entry(weight), "source": node.source}
    return {"format": FORMAT, "version": 1, "model": Path(caffemodel).name if caffemodel else None,
            "conventions": CONVENTIONS, "blobs": blobs, "layers": out_layers}


def _weight_of(node):
    packed = node.params.get("packed_params")
    if packed is None:
        return None
    if node.op.startswith("quantized::conv"):
        return unpack_conv(packed)[0]
    return unpack_linear(packed)[0]


def _weight_entry(weight):
    import torch
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales = [float(v) for v in weight.q_per_channel_scales()]
        zps = [int(v) for v in weight.q_per_channel_zero_points()]
        entry = {"dtype": "qint8", "scheme": "per_channel_affine", "axis": int(weight.q_per_channel_axis()),
                 "scale": scales, "zero_point": zps}
    else:
        scales, zps = [float(weight.q_scale())], [int(weight.q_zero_point())]
        entry = {"dtype": "qint8", "scheme": "per_tensor_affine", "scale": scales[0], "zero_point": zps[0]}
    if all(z == 0 for z in zps):
        entry["ncnn_scale"] = [1.0 / s for s in scales] if len(scales) > 1 else 1.0 / scales[0]
    return entry


def files_for(graph, layers, caffemodel):
    """``[(path, emit)]`` for ``tracecap.atomic.write_files``: the table, or nothing for a float graph."""
    if not is_quantized(graph):
        return []
    text = (json.dumps(build(graph, layers, caffemodel), indent=1) + "\n").encode("utf-8")
    return [(path_for(caffemodel), lambda write: write(text))]
