"""Weights made on demand: a blob's shape while the net is built, its values only while it is written.

Most weights go to the caffemodel straight from the tensors' memory. A blob that is a transform
of a weight (a transpose, a dtype conversion, a dequantized tensor) would otherwise be a second
copy of that weight held from mapping until the file is done; as a :class:`LazyBlob` it is made
by the writer right before its bytes go to the file and dropped right after, so at most one
layer's transformed blobs exist at a time. Everything that only looks at a blob (its shape, its
size, the prototxt) works from the shape alone; ``np.asarray(lazy)`` makes the values.
"""
from __future__ import annotations

import math

import numpy as np

from tracecap.errors import MappingError
from tracecap.mappers.caffe.wire import blob_array


class LazyBlob:
    """A float32 blob of ``shape`` whose values ``produce()`` returns (any array-like) when asked."""

    __slots__ = ("shape", "_produce")
    dtype = np.dtype("<f4")

    def __init__(self, shape, produce):
        self.shape = tuple(int(d) for d in shape)
        self._produce = produce

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 4 * self.size

    def materialize(self, ctx: str = "blob") -> np.ndarray:
        """The values as :func:`wire.blob_array` gives them (float32, little-endian, C order)."""
        arr = blob_array(self._produce(), ctx)
        if arr.shape != self.shape:
            raise MappingError(f"{ctx}: made an array of shape {arr.shape}, declared {self.shape}")
        return arr

    def __array__(self, dtype=None, copy=None):
        arr = self.materialize()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __repr__(self):
        return f"LazyBlob(shape={self.shape})"


_F4 = np.dtype("<f4")


def ready(blob) -> bool:
    """Is ``blob`` already what the writer takes: a LazyBlob, or a float32 little-endian C-order array?"""
    return isinstance(blob, LazyBlob) or (type(blob) is np.ndarray and blob.dtype == _F4 and blob.flags.c_contiguous)


def written_array(blob, ctx: str = "blob") -> np.ndarray:
    """``blob`` (an array or a :class:`LazyBlob`) as the float32 C-order array written to the file."""
    return blob.materialize(ctx) if isinstance(blob, LazyBlob) else blob_array(blob, ctx)
