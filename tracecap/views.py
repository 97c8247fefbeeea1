"""Which storage elements a strided tensor covers, and how one tensor indexes another.

The builder follows in-place writes through views with these facts: when ``x1`` (a chunk of
``x``) is written, ``x`` changed where ``x1`` lies (``x[:, :c] = x1``) and ``x2`` (the other
chunk) did not. A ``Layout`` is what decides it - storage, offset, shape and strides - and
``index_within`` finds the ``tensor[index]`` (slices and ints) that one layout is of another,
checked element by element, so a relation is only ever claimed when it is exact.
"""
from __future__ import annotations

from itertools import combinations
from typing import NamedTuple

import numpy as np
import torch


class Layout(NamedTuple):
    storage: int          # data pointer of the untyped storage (0 is never used: freed storage)
    offset: int           # storage offset, in elements
    shape: tuple
    stride: tuple


def layout(t):
    """The Layout of a strided tensor with elements and live storage, else None."""
    try:
        if t.layout != torch.strided or t.numel() == 0:
            return None
        ptr = t.untyped_storage().data_ptr()
        if not ptr:
            return None
        return Layout(ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
    except (RuntimeError, NotImplementedError):  # meta, sparse, functional tensors ...
        return None


def elements(lay):
    """Storage index of every element, shaped like the tensor."""
    idx = np.full(lay.shape, lay.offset, dtype=np.int64)
    for d, (n, s) in enumerate(zip(lay.shape, lay.stride)):
        shape = [1] * len(lay.shape)
        shape[d] = n
        idx = idx + (np.arange(n, dtype=np.int64) * s).reshape(shape)
    return idx


def _extent(lay):
    lo = lay.offset + sum((n - 1) * s for n, s in zip(lay.shape, lay.stride) if s < 0)
    hi = lay.offset + sum((n - 1) * s for n, s in zip(lay.shape, lay.stride) if s > 0)
    return lo, hi


def overlaps(a, b):
    """Do layouts ``a`` and ``b`` share a storage element?"""
    if a.storage != b.storage:
        return False
    (alo, ahi), (blo, bhi) = _extent(a), _extent(b)
    if ahi < blo or bhi < alo:
        return False
    return bool(np.intersect1d(elements(a).ravel(), elements(b).ravel(), assume_unique=False).size)


def covered_by(part, whole, within):
    """Are the elements of ``part`` that lie in ``within`` all elements of ``whole``?"""
    mine = np.intersect1d(elements(part).ravel(), elements(within).ravel())
    return bool(np.isin(mine, elements(whole).ravel()).all())


def same_elements(a, b):
    """Both row-major over the same elements: one is a reshape of the other."""
    if a.storage != b.storage or a.offset != b.offset or _numel(a) != _numel(b):
        return False
    return _row_major(a) and _row_major(b)


def _numel(lay):
    n = 1
    for d in lay.shape:
        n *= d
    return n


def _row_major(lay):
    expect = 1
    for n, s in zip(reversed(lay.shape), reversed(lay.stride)):
        if n != 1 and s != expect:
            return False
        expect *= n
    return True


def index_within(outer, inner):
    """The index (a tuple of slices and ints) with ``outer_tensor[index]`` laid out as ``inner``, or None.

    Dims of ``outer`` that ``inner`` lacks take an int; the others a slice with a positive step.
    The answer is verified element by element.
    """
    if outer.storage != inner.storage or len(inner.shape) > len(outer.shape):
        return None
    diff = inner.offset - outer.offset
    if diff < 0:
        return None
    starts = _starts(outer, diff)
    if starts is None:
        return None
    want = elements(inner)
    have = None
    for dropped in combinations(range(len(outer.shape)), len(outer.shape) - len(inner.shape)):
        kept = [d for d in range(len(outer.shape)) if d not in dropped]
        steps = {}
        for j, d in enumerate(kept):
            if inner.shape[j] == 1:
                steps[d] = 1
            elif outer.stride[d] > 0 and inner.stride[j] > 0 and inner.stride[j] % outer.stride[d] == 0:
                steps[d] = inner.stride[j] // outer.stride[d]
            else:
                break
        else:
            index = []
            for d in range(len(outer.shape)):
                if d in steps:
                    j = kept.index(d)
                    stop = starts[d] + (inner.shape[j] - 1) * steps[d] + 1
                    if stop > outer.shape[d]:
                        break
                    whole = (starts[d], stop, steps[d]) == (0, outer.shape[d], 1)
                    index.append(slice(None) if whole else slice(starts[d], stop, steps[d] if steps[d] != 1 else None))
                else:
                    index.append(starts[d])
            else:
                have = elements(outer) if have is None else have
                got = have[tuple(index)]
                if got.shape == want.shape and np.array_equal(got, want):
                    return tuple(index)
    return None


def _starts(outer, diff):
    """Per-dim start positions whose offsets sum to ``diff`` (mixed radix over the strides)."""
    starts = [0] * len(outer.shape)
    dims = sorted((d for d, n in enumerate(outer.shape) if n > 1 and outer.stride[d] > 0),
                  key=lambda d: -outer.stride[d])
    for d in dims:
        starts[d], diff = divmod(diff, outer.stride[d])
        if starts[d] >= outer.shape[d]:
            return None
    return starts if diff == 0 else None
