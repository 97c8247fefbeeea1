"""Allow-list entries for numpy arrays, scalars and dtypes (common in checkpoint dicts: ``best_acc``).

numpy's own ``__setstate__`` would accept structured and object dtypes from the file; we accept
only simple numeric/text dtypes, check that the byte count matches the shape, and copy.
"""
from __future__ import annotations

import math
import re

import numpy as np

from tracecap.errors import CheckpointError

from .allowlist import Marker, allow, allow_value, arity
from .placeholders import Pending, resolve

NDARRAY = Marker("numpy.ndarray", np.ndarray)
for _path in ("numpy.ndarray", "numpy.core.multiarray.ndarray", "numpy._core.multiarray.ndarray"):
    allow_value(_path, NDARRAY)

_SPEC = re.compile(r"[biufcSUO]\d{0,4}|\?|bool|float(16|32|64)|int(8|16|32|64)|uint(8|16|32|64)|complex(64|128)")


def _text_as_bytes(data):
    """Python 2 wrote raw array bytes as ``str``; we decoded them as UTF-8, so encode back."""
    return data.encode("utf-8") if isinstance(data, str) else data


@allow("numpy.dtype", "numpy.core.multiarray.dtype", "numpy._core.multiarray.dtype")
def dtype_class(policy, args, kwargs, new):
    spec, align, copy = arity(args, 1, 3, "numpy.dtype")
    if type(spec) is not str or not _SPEC.fullmatch(spec):
        raise CheckpointError(f"numpy dtype {spec!r:.40} is not supported (only plain numeric and text dtypes)")
    base = np.dtype(spec)
    return Pending("numpy.dtype", lambda state, has: _dtype_state(base, state, has))


def _dtype_state(base, state, has_state):
    if not has_state:
        return base
    if type(state) is not tuple or len(state) < 8 or state[1] not in ("<", ">", "|", "="):
        raise CheckpointError("malformed numpy dtype state")
    if state[2] is not None or state[3] is not None:
        raise CheckpointError("structured or sub-array numpy dtypes are not supported")
    return base.newbyteorder(state[1]) if state[1] in "<>" and base.itemsize > 1 else base


def _np_dtype(value):
    value = resolve(value)
    if not isinstance(value, np.dtype):
        raise CheckpointError(f"expected a numpy dtype, got {type(value).__name__}")
    return value


def _shape(value):
    if type(value) not in (tuple, list) or not all(type(v) is int and v >= 0 for v in value):
        raise CheckpointError(f"numpy shape must be a tuple of non-negative ints, got {value!r:.60}")
    return tuple(value)


@allow("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
def reconstruct(policy, args, kwargs, new):
    subtype, shape, typecode = arity(args, 3, 3, "numpy _reconstruct")
    if subtype is not NDARRAY:
        raise CheckpointError(f"numpy array subclass {subtype!r} is not supported")
    return Pending("numpy.ndarray", _array_state)


def _array_state(state, has_state):
    if not has_state:
        return np.empty((0,))
    if type(state) is tuple and len(state) == 4:
        state = (1,) + state
    if type(state) is not tuple or len(state) != 5:
        raise CheckpointError("malformed numpy array state")
    _, shape, dtype, fortran, data = state
    shape, dtype = _shape(shape), _np_dtype(dtype)
    count = math.prod(shape)
    order = "F" if fortran is True else "C"
    if dtype.hasobject:
        if type(data) is not list or len(data) != count:
            raise CheckpointError("numpy object array state does not match its shape")
        flat = np.empty(count, dtype=object)
        for i, item in enumerate(data):
            flat[i] = item
        return flat.reshape(shape, order=order)
    data = _text_as_bytes(data)
    if type(data) not in (bytes, bytearray) or len(data) != count * dtype.itemsize:
        raise CheckpointError(
            f"numpy array of shape {list(shape)} and dtype {dtype} needs {count * dtype.itemsize} bytes, "
            f"the file has {len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy(order=order)


@allow("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
def scalar(policy, args, kwargs, new):
    dtype, data = arity(args, 1, 2, "numpy scalar")
    dtype = _np_dtype(dtype)
    if dtype.hasobject:
        return data
    data = _text_as_bytes(data)
    if type(data) not in (bytes, bytearray) or len(data) != dtype.itemsize:
        raise CheckpointError(f"numpy {dtype} scalar needs {dtype.itemsize} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


@allow("numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer")
def frombuffer(policy, args, kwargs, new):
    buf, dtype, shape, order = arity(args, 3, 4, "numpy _frombuffer")
    dtype, shape = _np_dtype(dtype), _shape(shape)
    if type(buf) not in (bytes, bytearray) or dtype.hasobject or len(buf) != math.prod(shape) * dtype.itemsize:
        raise CheckpointError("numpy buffer does not match its shape and dtype")
    order = "F" if order == "F" else "C"
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy(order=order)
