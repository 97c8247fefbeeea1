"""Layer sequences a runtime reads wrongly, rewritten into equivalent ones after mapping.

OpenCV 4.x fuses a Power layer whose ``power`` is not 1 with a Power layer reading it into one
activation, and computes it wrongly: ``1 / x`` then ``* 3`` comes out as neither (measured with
OpenCV 4.14; Caffe runs both layers right). It happens across nodes (``x.reciprocal() * 3``,
``x.pow(2) + 1``), so no single mapper can avoid it. A one-bottom Concat between the two is a plain
copy in both runtimes and keeps OpenCV from fusing them.
"""
from __future__ import annotations

from tracecap.mappers.caffe.netspec import Layer


def _is_power(layer, nontrivial):
    return layer.type == "Power" and (not nontrivial or float(layer.params.get("power", 1.0)) != 1.0)


def separate_power_pairs(layers):
    """``layers`` with a copy (Concat) between each Power(power != 1) and a Power that reads it."""
    out, writer = [], {}
    for layer in layers:
        if _is_power(layer, nontrivial=False) and layer.bottoms:
            src = layer.bottoms[0]
            if src in writer and _is_power(writer[src], nontrivial=True):
                copy = Layer(type="Concat", name=f"{layer.name}/unfused", bottoms=[src],
                             tops=[f"{src}/unfused_{layer.name}"], params={"axis": 0})
                copy.origin = layer.origin
                out.append(copy)
                layer.bottoms = [copy.tops[0]] + layer.bottoms[1:]
        out.append(layer)
        for top in layer.tops:
            writer[top] = layer
    return out
