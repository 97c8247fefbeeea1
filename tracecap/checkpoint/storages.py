"""Storages: dtype tables, allocation bounded by the file, byte order, tensor views on shared memory.

Every format ends in the same place: a flat run of bytes (a storage) that one or more tensors
view with an offset, a shape and strides.  This module owns that step so that size claims from
the file are checked once, here, against the bytes the file really has, before anything is
allocated, and so that sharing between tensors (views, tied weights) survives loading.
"""
from __future__ import annotations

import mmap

import numpy as np
import torch

from tracecap.errors import CheckpointError

# Storage class name (as pickled, e.g. torch.FloatStorage) -> dtype.  Old files name the storage
# class; the element size follows from the dtype.
STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "QInt8Storage": torch.qint8,
    "QUInt8Storage": torch.quint8,
    "QInt32Storage": torch.qint32,
    "QUInt4x2Storage": torch.quint4x2,
    "QUInt2x4Storage": torch.quint2x4,
}

# Tensor class names used by the tar format (torch.FloatTensor ...) map to the same dtypes.
TENSOR_DTYPES = {name[: -len("Storage")] + "Tensor": dt for name, dt in STORAGE_DTYPES.items()}

_DTYPE_NAMES = (
    "float64 double float32 float float16 half bfloat16 int64 long int32 int int16 short int8 "
    "uint8 uint16 uint32 uint64 bool complex128 cdouble complex64 cfloat complex32 chalf "
    "qint8 quint8 qint32 quint4x2 quint2x4 float8_e4m3fn float8_e5m2 float8_e4m3fnuz "
    "float8_e5m2fnuz float8_e8m0fnu"
).split()
# torch.<name> globals that name a dtype (pickled as e.g. GLOBAL 'torch float32').
TORCH_DTYPES = {n: getattr(torch, n) for n in _DTYPE_NAMES if isinstance(getattr(torch, n, None), torch.dtype)}

QUANTIZED = {torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4}
PACKED = {torch.quint4x2: 2, torch.quint2x4: 4}  # sub-byte types: elements per stored byte
_INT_VIEW = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def element_size(dtype: torch.dtype) -> int:
    return dtype.itemsize


def swap_unit(dtype: torch.dtype) -> int:
    """Bytes per byte-swapped word: complex numbers swap each half, one-byte types never swap."""
    size = element_size(dtype)
    return size // 2 if dtype.is_complex else size


class StorageRef:
    """A storage as the file describes it: key, dtype, element count, saved location.

    ``data`` is a uint8 tensor owning the bytes; every tensor built on this storage shares its
    memory, so tied weights stay tied.  Views (old formats) point at a root with an offset.
    """

    __slots__ = ("key", "dtype", "numel", "location", "data", "root", "offset", "filled")

    def __init__(self, key, dtype, numel, location, data=None, root=None, offset=0):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.location = location
        self.data = data
        self.root = root
        self.offset = offset  # in elements of ``dtype``, into ``root``
        self.filled = False

    @property
    def nbytes(self) -> int:
        return self.numel * element_size(self.dtype)

    def base(self):
        """(root storage, byte offset of this storage inside it)."""
        if self.root is None:
            return self, 0
        return self.root, self.offset * element_size(self.dtype)

    def tensor(self) -> torch.Tensor:
        """The whole storage as a 1-D tensor of its dtype (for storages saved on their own)."""
        return build_tensor(self, 0, (self.numel,), (1,), self.dtype)

    def __repr__(self):
        view = f", view of {self.root.key!r} at {self.offset}" if self.root is not None else ""
        return f"StorageRef(key={self.key!r}, dtype={self.dtype}, numel={self.numel}, location={self.location!r}{view})"


def check_count(numel, what="storage"):
    if type(numel) is not int or numel < 0:
        raise CheckpointError(f"{what} has an invalid element count {numel!r}")
    return numel


def allocate(ref: StorageRef, budget: int) -> None:
    """Give ``ref`` its (uninitialised) bytes, refusing sizes the file cannot contain."""
    nbytes = ref.nbytes
    if nbytes > budget:
        raise CheckpointError(
            f"storage {ref.key!r} claims {ref.numel} elements of {ref.dtype} ({nbytes} bytes) "
            f"but the file has only {budget} bytes of data left; the file is truncated or corrupt")
    ref.data = _populated(nbytes) if nbytes >= _POPULATE_FROM else torch.empty(nbytes, dtype=torch.uint8)


# glibc serves smaller blocks from its heap, whose pages stay mapped from one use to the next;
# from 32 MiB (its largest mmap threshold) on, every allocation is a new mapping
_POPULATE_FROM = 32 << 20
_POPULATE_FLAGS = getattr(mmap, "MAP_POPULATE", None)


def _populated(nbytes: int) -> torch.Tensor:
    """``nbytes`` of fresh memory with its pages already mapped (Linux ``MAP_POPULATE``).

    A big storage is filled right after it is allocated; mapping its pages in one call costs
    less than taking one page fault per 4 KiB while the file's bytes are copied in (glibc gives
    blocks this big fresh mappings anyway). The tensor
    owns the mapping (it is unmapped when the last tensor on it goes); like the storages of
    ``torch.load(mmap=True)`` it cannot be resized in place.
    """
    if _POPULATE_FLAGS is None:
        return torch.empty(nbytes, dtype=torch.uint8)
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE_FLAGS)
    except (OSError, ValueError):
        return torch.empty(nbytes, dtype=torch.uint8)
    return torch.frombuffer(region, dtype=torch.uint8)


def finish_bytes(ref: StorageRef, big_endian: bool) -> None:
    """Byte-swap big-endian data to the host order and normalise booleans to 0/1."""
    arr = ref.data.numpy()
    unit = swap_unit(ref.dtype)
    if big_endian and unit > 1:
        arr.view(_INT_VIEW[unit]).byteswap(inplace=True)
    if ref.dtype is torch.bool:
        np.minimum(arr, 1, out=arr)  # a corrupt byte must not become an invalid bool
    ref.filled = True


def _ints(value, what):
    if not isinstance(value, (tuple, list, torch.Size)) or not all(type(v) is int for v in value):
        raise CheckpointError(f"tensor {what} must be a tuple of ints, got {value!r:.80}")
    return tuple(value)


def check_view(size, stride, offset, available, where="tensor"):
    """Ensure a (size, stride, offset) view stays inside ``available`` elements."""
    size = _ints(size, "size")
    stride = _ints(stride, "stride")
    if type(offset) is not int or offset < 0:
        raise CheckpointError(f"{where} has an invalid storage offset {offset!r}")
    if len(size) != len(stride):
        raise CheckpointError(f"{where} has {len(size)} sizes but {len(stride)} strides")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"{where} has a negative size or stride: {size} / {stride}")
    if 0 in size:
        return size, stride
    extent = 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if offset + extent > available:
        raise CheckpointError(
            f"{where} of shape {list(size)} (stride {list(stride)}, offset {offset}) reaches element "
            f"{offset + extent}, beyond its storage of {available} elements")
    return size, stride


def build_tensor(ref: StorageRef, offset, size, stride, dtype=None, quantizer=None) -> torch.Tensor:
    """A CPU tensor viewing ``ref`` — the shared root storage, so views keep sharing memory."""
    dtype = ref.dtype if dtype is None else dtype
    elsize = element_size(dtype)
    root, byte_base = ref.base()
    if byte_base % elsize:
        raise CheckpointError(f"storage {ref.key!r} is not aligned for {dtype}")
    size, stride = check_view(size, stride, offset, ref.nbytes // elsize * PACKED.get(dtype, 1))
    if quantizer is None:
        t = torch.empty((0,), dtype=dtype)
    else:
        t = quantizer(size)
    t.set_(root.data.untyped_storage(), byte_base // elsize + offset, size, stride)
    return t

