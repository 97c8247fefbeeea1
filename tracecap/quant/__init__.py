"""Quantized models: integer export and a bit-exact numpy executor of PyTorch's CPU kernels.

    with torch.no_grad(), tracecap.capture() as cap:
        y = qmodel(x)                                   # eager, FX or dynamically quantized
    tracecap.quant.export(cap.graph, "out/")            # out/manifest.json + out/arrays.npz
    codes = tracecap.quant.execute("out/", x_batch)     # what PyTorch computes, as integer codes

Modules, one idea each: ``arithmetic`` (rounding rules), ``engines`` (which rules an engine
uses, probed), ``layout`` (memory order from strides), ``facts`` (graph -> program),
``program`` (manifest + arrays), ``manifest`` (files), ``gemm`` and ``kernels`` (the integer
ops), ``execute``, ``export``, ``table`` (the quantization table written next to Caffe files).
"""
from tracecap.quant.errors import QuantError  # noqa: F401
from tracecap.quant.execute import execute  # noqa: F401
from tracecap.quant.export import export  # noqa: F401
from tracecap.quant.facts import is_quantized, read_graph  # noqa: F401
from tracecap.quant.manifest import load, reencode  # noqa: F401
from tracecap.quant.program import Program  # noqa: F401

__all__ = ["export", "execute", "load", "reencode", "read_graph", "is_quantized", "Program", "QuantError"]
