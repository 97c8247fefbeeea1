"""Fixes to the mapped layer list for runtime bugs that no single mapper can see: they depend on
which layer reads which, across nodes.

OpenCV 4.x (measured with 4.14) fuses a Power layer whose power is not 1 with the layer that alone
reads it when that reader is a scalar scale/shift - a Power with power 1, or a Scale or BatchNorm
with one channel - and the fused layer is wrong: ``sqrt(x) * 2 + 1`` comes out 42 % off. Caffe
computes both layers as written. An identity Split between the two (both runtimes run it, and
OpenCV does not fuse across it) keeps them apart; it costs one layer and no computation.
"""
from __future__ import annotations

from collections import defaultdict

from tracecap.mappers.caffe.netspec import Layer


def _is_nonlinear_power(layer):
    return layer.type == "Power" and float(layer.params.get("power", 1.0)) != 1.0


def _is_scalar_affine(layer):
    if layer.type == "Power":
        return float(layer.params.get("power", 1.0)) == 1.0
    if layer.type in ("Scale", "BatchNorm"):
        return len(layer.bottoms) == 1 and bool(layer.blobs) and layer.blobs[0].size == 1
    return False


def keep_powers_apart(layers):
    """``layers`` with a Split inserted wherever OpenCV would fuse a Power into its only reader wrongly."""
    readers = defaultdict(list)
    for layer in layers:
        for b in layer.bottoms:
            readers[b].append(layer)
    producers = {t: layer for layer in layers for t in layer.tops}
    out = []
    for layer in layers:
        for i, b in enumerate(layer.bottoms):
            src = producers.get(b)
            if (src is not None and _is_nonlinear_power(src) and _is_scalar_affine(layer)
                    and len(readers[b]) == 1 and b not in layer.tops):
                apart = f"{b}/unfused"
                split = Layer(type="Split", name=apart, bottoms=[b], tops=[apart])
                split.origin = src.origin
                out.append(split)
                layer.bottoms[i] = apart
        out.append(layer)
    return out
