"""Fixes to the mapped layer list for runtime bugs that no single mapper can see: they depend on
which layer reads which, across nodes.

OpenCV 4.x (measured with 4.14) fuses a Power layer whose power is not 1 with the layer that alone
reads it when that reader is a scalar scale/shift - a Power with power 1, or a Scale or BatchNorm
with one channel - and the fused layer is wrong: ``sqrt(x) * 2 + 1`` comes out 42 % off. Caffe
computes both layers as written. An identity Split between the two (both runtimes run it, and
OpenCV does not fuse across it) keeps them apart; it costs one layer and no computation.

OpenCV also folds a Scale with weights into the Convolution, Deconvolution, InnerProduct or
BatchNorm before it (also through a Power in between) and aborts (``convolution_layer.cpp``:
``outCn == w.total()``) when the Scale's blob is not one value per channel, e.g. ``conv(x) * map``
with a constant H×W map. Caffe runs it. The same Split keeps such a Scale apart.
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


_FOLDS_A_SCALE = frozenset({"Convolution", "Deconvolution", "InnerProduct", "BatchNorm"})


def _is_map_scale(layer):
    """A one-bottom Scale whose weights are not one per channel (axis/num_axes not the defaults)."""
    return (layer.type == "Scale" and len(layer.bottoms) == 1 and bool(layer.blobs)
            and (layer.params.get("axis", 1), layer.params.get("num_axes", 1)) != (1, 1))


def _folds_into(src, producers):
    """Would OpenCV fold a Scale reading ``src``'s top into a weighted layer (directly or through Powers)?"""
    while src is not None and src.type == "Power":
        src = producers.get(src.bottoms[0]) if src.bottoms else None
    return src is not None and src.type in _FOLDS_A_SCALE


def keep_fusions_apart(layers):
    """``layers`` with a Split inserted wherever OpenCV would fuse a layer into its reader wrongly:
    a Power into a scalar scale/shift, a weighted layer into a per-position Scale."""
    readers = defaultdict(list)
    for layer in layers:
        for b in layer.bottoms:
            readers[b].append(layer)
    producers = {t: layer for layer in layers for t in layer.tops}
    out, names = [], {t for layer in layers for t in layer.tops}
    for layer in layers:
        for i, b in enumerate(layer.bottoms):
            src = producers.get(b)
            if src is None or b in layer.tops:
                continue
            if ((_is_nonlinear_power(src) and _is_scalar_affine(layer) and len(readers[b]) == 1)
                    or (_is_map_scale(layer) and _folds_into(src, producers))):
                apart, k = f"{b}/unfused", 1
                while apart in names:
                    k += 1
                    apart = f"{b}/unfused{k}"
                names.add(apart)
                split = Layer(type="Split", name=apart, bottoms=[b], tops=[apart])
                split.origin = src.origin
                out.append(split)
                layer.bottoms[i] = apart
        out.append(layer)
    return out
