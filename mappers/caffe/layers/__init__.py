"""The Caffe mappers, one module per op family; importing this package registers them all.

A mapper is a small function ``fn(node, ctx) -> list[Layer]`` registered (``registry.register``)
for the canonical op names it serves. Where PyTorch and Caffe semantics differ (pooling rounding,
AVE divisor, broadcasting) it emits an exact construction - shared ones live in
``constructions`` - or raises ``Unsupported`` with the reason, never an approximate layer.
"""
from tracecap.mappers.caffe.layers import (  # noqa: F401  (imported for their registrations)
    activation, conv, eltwise, math, norm, pad, pool, pool3d, quantized, reduce, resample, select, shape,
)
