"""The mapper registry and the per-node context mappers work with.

A mapper is a small function ``fn(node, ctx) -> list[Layer]`` registered for one
or more canonical op names. It reads ``node.params`` and shapes, and describes
layers as plain ``netspec.Layer`` data; it never touches protobuf. When an op's
arguments have no exact Caffe equivalent it calls ``ctx.unsupported(why)``;
the converter collects those for every node and reports them together.

Weights are not copied: ``ctx.array`` and ``ctx.weight`` hand out read-only numpy views of the
tensors' own memory when they already are float32, contiguous and on the CPU, and the writer
writes those views straight to the file. A mapper that changes values makes its own array
(``a * 2``, ``np.repeat``, ``.copy()``), never writes into the one it was given (numpy refuses:
it is read-only); a mapper whose blob is a transform of a big weight describes it as a
``LazyBlob`` (``ctx.weight(b, transpose=True)``), made only while the file is written.
"""
from __future__ import annotations

import numpy as np
import torch

from tracecap.graph import Blob
from tracecap.mappers.caffe.lazy_blob import LazyBlob
from tracecap.mappers.caffe.netspec import Layer, layer_types

MAPPERS = {}


def caffe_name(blob):
    """The Caffe blob name that stands for graph blob ``blob``: its graph name (legal in Caffe, since
    ``Graph.unique_name`` only lets Caffe-safe characters through). The one place the rule lives."""
    return blob.name


def register(*ops):
    """Register ``fn`` as the mapper of each canonical op name in ``ops``."""
    def deco(fn):
        for op in ops:
            if op in MAPPERS:
                raise ValueError(f"op {op!r} already has a Caffe mapper ({MAPPERS[op].__name__})")
            MAPPERS[op] = fn
        return fn
    return deco


class Unsupported(Exception):
    """This node's arguments cannot be expressed exactly in Caffe (reason in the message)."""


class Context:
    """What a mapper may ask about its node and the net being built."""

    def __init__(self, node, dialect):
        self.node = node
        self.dialect = dialect
        self._count = 0

    # ---- names -------------------------------------------------------------------------
    @staticmethod
    def bottom(b):
        """The Caffe blob name of activation operand ``b`` (refuses constants and non-tensors)."""
        if not isinstance(b, Blob):
            raise Unsupported(f"expected a tensor operand, got {type(b).__name__}")
        if b.is_constant:
            raise Unsupported(f"operand {b.name} is a constant here; Caffe needs it as a layer input or a weight")
        return caffe_name(b)

    @property
    def top(self):
        """Caffe name of the node's (first) output; the last layer of a node writes it."""
        return caffe_name(self.node.tops[0])

    def tmp(self, what):
        """A fresh name for an intermediate blob/layer inside this node's decomposition."""
        self._count += 1
        return f"{self.top}/{what}" if self._count == 1 else f"{self.top}/{what}{self._count}"

    # ---- values ------------------------------------------------------------------------
    @staticmethod
    def array(b):
        """float32 numpy array of a constant blob: a read-only view of the tensor when it can be one."""
        return tensor_array(_constant(b))

    @staticmethod
    def weight(b, transpose=False):
        """A constant written as a blob (a layer's weight or bias): ``array(b)`` when that is a view of
        the tensor, else a ``LazyBlob`` converting it while it is written; with ``transpose``, the
        2-D constant's transpose, always lazy."""
        t = _constant(b)
        if transpose:
            if t.dim() != 2:
                raise Unsupported(f"expected a 2-D constant, got shape {tuple(t.shape)}")
            return LazyBlob((t.shape[1], t.shape[0]), lambda: tensor_array(t).T)
        return tensor_blob(t)

    @staticmethod
    def shape(b):
        return tuple(b.shape)

    def out_shape(self, k=0):
        return tuple(self.node.tops[k].shape)

    def in_shape(self):
        x = self.node.params.get("input")
        if not isinstance(x, Blob) or x.shape is None:
            raise Unsupported(f"expected a tensor input, got {type(x).__name__}")
        return tuple(x.shape)

    def has_layer(self, layer_type):
        return layer_type in layer_types(self.dialect)

    def unsupported(self, why):
        raise Unsupported(why)

    def layer(self, type, bottoms, tops=None, name=None, params=None, blobs=()):
        tops = [self.top] if tops is None else list(tops)
        return Layer(type=type, name=name or tops[0], bottoms=list(bottoms), tops=tops, params=dict(params or {}),
                     blobs=[b if isinstance(b, LazyBlob) else np.asarray(b, dtype=np.float32) for b in blobs])


def _constant(b) -> torch.Tensor:
    if not (isinstance(b, Blob) and b.is_constant):
        raise Unsupported("expected a constant (weight) operand")
    t = b.value
    return t.detach() if t.requires_grad else t


def _float32_view(t: torch.Tensor):
    """A read-only numpy view of ``t``'s memory if it is a plain float32 contiguous CPU tensor, else None."""
    if (t.dtype is not torch.float32 or not t.is_cpu or t.layout is not torch.strided
            or not t.is_contiguous() or t.is_neg()):  # (the conjugate bit exists for complex dtypes only)
        return None
    view = (t.detach() if t.requires_grad else t).numpy()
    view.flags.writeable = False
    return view


def tensor_array(t: torch.Tensor) -> np.ndarray:
    """``t`` as a float32 C-order array: a read-only view of its memory when possible, a new array otherwise."""
    view = _float32_view(t)
    return view if view is not None else t.detach().to("cpu").float().contiguous().numpy()


def tensor_blob(t: torch.Tensor):
    """``t`` as a blob: the view of :func:`tensor_array`, or a ``LazyBlob`` for a plain CPU floating tensor
    that needs converting (anything else is converted now, so that an error is the mapper's)."""
    t = t.detach() if t.requires_grad else t
    view = _float32_view(t)
    if view is not None:
        return view
    if t.is_cpu and t.layout is torch.strided and t.dtype.is_floating_point:
        return LazyBlob(tuple(t.shape), lambda: t.float().contiguous().numpy())
    return tensor_array(t)


def norm_axis(axis, ndim):
    if axis is None:
        return None
    axis = int(axis)
    return axis + ndim if axis < 0 else axis


def pair(v, what="value"):
    """(h, w) from an int, a 1-tuple or a pair."""
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        if len(v) == 2:
            return int(v[0]), int(v[1])
        raise Unsupported(f"{what} {tuple(v)} is not 2-D")
    return int(v), int(v)
