"""Padding: ``F.pad`` / ``nn.ZeroPad2d``. A symmetric zero pad read only by convolutions never gets
here: ``passes.fold_pad_into_conv`` makes it their padding."""
from __future__ import annotations

from tracecap.mappers.caffe.registry import register


@register("pad")
def pad(node, ctx):
    ctx.unsupported(f"pad {tuple(node.params['pad'])} ({node.params['mode']}): Caffe has no padding layer; "
                    f"only a symmetric zero pad read by convolutions is folded into them")
