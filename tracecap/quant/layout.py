"""Memory layouts: what ``.stride()`` says about a tensor's order in memory, and reordering.

PyTorch keeps quantized conv weights and activations channels-last: an unpacked conv weight of
shape [32, 3, 3, 3] has strides [27, 1, 9, 3], so its bytes run O, H, W, I ("OHWI" = NHWC). The
logical (index) order is always OIHW / NCHW. A layout here is a string of dimension letters in
memory order, outermost first; ``order`` is the matching permutation of the logical dims.
"""
from __future__ import annotations

import numpy as np

LOGICAL = {1: "C", 2: "NC", 3: "NCL", 4: "NCHW", 5: "NCDHW"}
WEIGHT_LOGICAL = {1: "O", 2: "OI", 3: "OIL", 4: "OIHW", 5: "OIDHW"}


def memory_order(shape, stride):
    """The logical dims sorted from the outermost (largest stride) to the innermost in memory.

    Size-1 dims carry no information; they keep their logical position among equals.
    """
    dims = list(range(len(shape)))
    key = [(stride[d] if shape[d] != 1 else None) for d in dims]
    informative = sorted((d for d in dims if key[d] is not None), key=lambda d: (-key[d], d))
    if len(informative) == len(dims):
        return tuple(informative)
    # put size-1 dims where they are logically, around the informative ones
    out, it = [], iter(informative)
    for d in dims:
        out.append(d if key[d] is None else next(it))
    return tuple(out)


def layout_name(shape, stride, weight=False):
    """'NCHW', 'NHWC', 'OI', 'OHWI' ... the letters of the dims in memory order."""
    letters = (WEIGHT_LOGICAL if weight else LOGICAL).get(len(shape))
    if letters is None:
        return "".join(f"d{d}" for d in memory_order(shape, stride))
    return "".join(letters[d] for d in memory_order(shape, stride))


def order_of(layout, ndim, weight=False):
    """Permutation of the logical dims that a layout string names (inverse of ``layout_name``)."""
    letters = (WEIGHT_LOGICAL if weight else LOGICAL).get(ndim)
    if letters is None or sorted(layout) != sorted(letters):
        raise ValueError(f"layout {layout!r} does not name the dims of a {ndim}-d tensor ({letters})")
    return tuple(letters.index(ch) for ch in layout)


def to_layout(array, layout, weight=False):
    """A logical-order array rearranged (and made contiguous) in ``layout``'s memory order."""
    order = order_of(layout, array.ndim, weight)
    return np.ascontiguousarray(np.transpose(array, order))


def from_layout(array, layout, weight=False):
    """The logical-order view of an array written in ``layout``'s memory order."""
    order = order_of(layout, array.ndim, weight)
    return np.transpose(array, np.argsort(order))


def channels_last_name(ndim, weight=False):
    """The channels-last layout string of an ndim tensor ('NHWC', 'OHWI'); logical for ndim < 3."""
    letters = (WEIGHT_LOGICAL if weight else LOGICAL).get(ndim, "")
    if ndim < 3:
        return letters
    return letters[0] + letters[2:] + letters[1]
