"""Translate a Caffe net from the ``bvlc`` dialect to ``opencv``, exactly.

tracecap writes the two dialects from the same layers; they differ only where the protos do
(see docs/caffe-dialects.md): pooling field 13 (``round_mode`` enum vs ``ceil_mode`` bool, the
same number with opposite meanings) and ``Clip(0, 6)`` where ``opencv`` has ``ReLU6``. A
``bvlc`` file can therefore be run on the runtimes that read ``opencv`` (OpenCV, brocolli-caffe)
after rewriting exactly those fields. Anything else ``opencv`` cannot say (other Clip ranges,
Swish) is refused with the layer's name: a translation never approximates.
"""
from __future__ import annotations

import os

from tracecap.errors import MappingError
from tracecap.mappers.caffe import writer
from tracecap.mappers.caffe.proto import module_for


def bvlc_to_opencv(net):
    """The ``opencv``-dialect NetParameter equivalent to the ``bvlc`` NetParameter ``net`` (blobs kept)."""
    bvlc, opencv = module_for("bvlc"), module_for("opencv")
    head = bvlc.NetParameter()
    head.CopyFrom(net)
    head.ClearField("layer")
    out = opencv.NetParameter.FromString(head.SerializeToString(deterministic=True))
    for layer in net.layer:
        out.layer.add().CopyFrom(_layer_to_opencv(layer, bvlc, opencv))
    return out


def _layer_to_opencv(layer, bvlc, opencv):
    copy = bvlc.LayerParameter()
    copy.CopyFrom(layer)
    ceil = None
    if copy.HasField("pooling_param") and copy.pooling_param.HasField("round_mode"):
        ceil = copy.pooling_param.round_mode == bvlc.PoolingParameter.CEIL
        copy.pooling_param.ClearField("round_mode")
    if copy.type == "Clip":
        lo, hi = copy.clip_param.min, copy.clip_param.max
        if (lo, hi) != (0.0, 6.0):
            raise MappingError(f"layer {layer.name!r}: Clip({lo:g}, {hi:g}) has no opencv-dialect layer "
                               f"(only Clip(0, 6) = ReLU6 translates)")
        copy.ClearField("clip_param")
        copy.type = "ReLU6"
    if copy.HasField("swish_param") or copy.type == "Swish":
        raise MappingError(f"layer {layer.name!r}: Swish has no opencv-dialect layer")
    out = opencv.LayerParameter.FromString(copy.SerializeToString(deterministic=True))
    if ceil is not None:
        out.pooling_param.ceil_mode = ceil
    return out


def translate_files(prototxt, caffemodel, outdir, stem="translated"):
    """Write the opencv-dialect version of a bvlc prototxt + caffemodel into ``outdir``; return the paths."""
    net = writer.load(prototxt, caffemodel, dialect="bvlc")
    translated = bvlc_to_opencv(net)
    proto = os.path.join(outdir, f"{stem}.opencv.prototxt")
    model = os.path.join(outdir, f"{stem}.opencv.caffemodel")
    writer.save(translated, proto, model)
    return proto, model
