"""``export``: a captured quantized graph to ``manifest.json`` + ``arrays.npz``, or nothing.

Everything is read and checked first (``facts.read_graph`` refuses float models and unsupported
ops, listing each with its module path and source line); only then are both files written, in
one atomic step.
"""
from __future__ import annotations

from tracecap.quant import manifest as files
from tracecap.quant.facts import read_graph


def export(graph, out_dir, *, engine=None, int8_as="int8", weight_layout="OIHW"):
    """Write the integer program of ``graph`` to ``out_dir``; returns the manifest's path.

    engine         the quantized engine whose arithmetic the manifest states (default: the current
                   ``torch.backends.quantized.engine`` - the one the model was converted and run with)
    int8_as        'int8' (PyTorch's values) or 'uint8' (+128 on values and zero points)
    weight_layout  'OIHW' (logical order, NCHW) or 'OHWI' (channels-last, NHWC: how PyTorch keeps
                   quantized conv weights in memory) for 4-d weights
    """
    program = read_graph(graph, engine=engine, weight_layout=weight_layout, int8_as=int8_as)
    return files.write(program, out_dir)
