"""Padding: ``F.pad`` / ``nn.ZeroPad2d``; a symmetric zero pad read only by convolutions folds into them."""
from __future__ import annotations

from tracecap.graph import Blob
from tracecap.mappers.caffe.registry import register


def _foldable_pad(blob):
    """(pad input, (top, left)) when ``blob`` is a symmetric zero pad read only by convolutions."""
    node = blob.producer if isinstance(blob, Blob) else None
    if node is None or node.op != "pad":
        return None
    p = node.params
    pads = tuple(p["pad"])
    if p["mode"] != "constant" or (p["value"] or 0) != 0 or len(pads) != 4 or min(pads) < 0:
        return None
    left, right, top, bottom = pads
    if left != right or top != bottom or blob in node.graph.outputs:
        return None
    if not all(u.op == "conv2d" and u.params["input"] is blob for u in blob.users):
        return None
    return p["input"], (top, left)


@register("pad")
def pad(node, ctx):
    if _foldable_pad(node.tops[0]) is not None:
        return []  # each reading Convolution pads by itself
    ctx.unsupported(f"pad {tuple(node.params['pad'])} ({node.params['mode']}): Caffe has no padding layer; "
                    f"only a symmetric zero pad read by convolutions is folded into them")
