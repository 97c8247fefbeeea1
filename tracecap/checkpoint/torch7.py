"""Lua Torch7 files (``torch.save`` from Lua: the ``.t7`` model zoos) read as plain data.

PyTorch 0.1-0.3 read these with ``torch.utils.serialization.load_lua``, removed in 1.0.  The
format is Torch7's ``File:writeObject``: each value is an int32 type code and a payload

====  ==================  =====================================================================
code  type                payload
====  ==================  =====================================================================
0     nil                 -
1     number              double
2     string              int32 length, bytes
3     table               int32 index, int32 pair count, then key, value objects
4     torch class         int32 index, "V <version>" string, class name string (files older
                          than versioning start with the class name), then the class's data:
                          Tensors: int32 ndim, long sizes, long strides, long 1-based offset,
                          storage object; Storages: long count, raw elements; anything else
                          (nn/cudnn modules ...): one table object, its fields
5     boolean             int32 (1 = true)
6     function            int32 length, Lua bytecode, upvalues object
7, 8  function (shared)   int32 index, as 6 (upvalues as a list, resp. {name=, value=} pairs)
====  ==================  =====================================================================

The index of a table, torch object or shared function numbers it on first appearance; a later
occurrence writes only the index (shared references, cycles).  ``load_torch7`` turns the file
into Python values without running anything: numbers (integral ones as ints, Lua having only
doubles), ``str`` (or ``bytes`` if not UTF-8), ``LuaTable`` dicts, ``TorchObject`` for classes,
CPU tensors viewing shared storages (CUDA types come back on the CPU), ``StorageRef`` for bare
storages, and ``LuaFunction`` for functions, whose bytecode is kept as bytes and never loaded.
The reader is iterative (no recursion limit to hit) and checks each claim against the file.
"""
from __future__ import annotations

import io
import math

import torch

from tracecap.errors import CheckpointError

from .placeholders import ClassRef, Opaque
from .result import CheckpointInfo
from .storages import StorageRef, build_tensor, check_count
from .torch7_stream import AsciiStream, BinaryStream, layout_of, lua_number

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN, FUNCTION, LEGACY_SHARED_FUNCTION, SHARED_FUNCTION = range(9)
MAX_NESTING = 100_000  # open tables/objects at once; each costs memory, so a forged file cannot
MAX_DIMS = 64
MAX_REPEAT = 64  # a tensor may address its storage's elements up to this many times (stride 0)

ELEMENT_TYPES = {"Byte": torch.uint8, "Char": torch.int8, "Short": torch.int16, "Int": torch.int32,
                 "Long": torch.int64, "Float": torch.float32, "Double": torch.float64, "Half": torch.float16}
# cutorch writes CUDA data as the matching host type; torch.CudaTensor holds floats.
_CUDA = {"Cuda": torch.float32, **{f"Cuda{k}": v for k, v in ELEMENT_TYPES.items() if k != "Float"}}
# Classes with their own write methods whose layout is not the generic table of fields.
CUSTOM_LAYOUT = ("torch.Generator", "torch.Allocator", "tds.Hash", "tds.Vec", "tds.Atomic")


def element_class(typename: str, kind: str):
    """(dtype, location) for ``torch.<Type><kind>`` (kind "Tensor" or "Storage"), else None."""
    if not (typename.startswith("torch.") and typename.endswith(kind)):
        return None
    stem = typename[len("torch."):-len(kind)]
    if stem in ELEMENT_TYPES:
        return ELEMENT_TYPES[stem], "cpu"
    if stem in _CUDA:
        return _CUDA[stem], "cuda"
    return None


class LuaTable(dict):
    """A Lua table.  ``as_list()`` gives the values of a sequence (keys exactly 1..n)."""

    def as_list(self):
        n = len(self)
        if all(type(k) is int and 1 <= k <= n for k in self):
            return [self[i] for i in range(1, n + 1)]
        return None

    def __repr__(self):
        return f"LuaTable({dict.__repr__(self)})"


class TableKey:
    """A key Python cannot use as is: a table (unhashable), or ``true``/``false`` in a table that
    also has the number 1/0 as a key (distinct in Lua, equal in Python)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"TableKey({self.value!r:.60})"


class LuaFunction:
    """A serialized Lua function: bytecode (kept as bytes, never loaded) and its upvalues."""

    __slots__ = ("bytecode", "upvalues")

    def __init__(self, bytecode: bytes):
        self.bytecode = bytecode
        self.upvalues = None

    def __repr__(self):
        return f"<Lua function, {len(self.bytecode)} bytes of bytecode (not run)>"


class TorchObject(Opaque):
    """An instance of a Torch7 class (``nn.SpatialConvolution`` ...): typename, version, fields."""

    def __init__(self, typename: str, version):
        module, _, name = typename.rpartition(".")
        super().__init__(ClassRef(module, name))
        self.typename = typename
        self.version = version
        self.state = LuaTable()

    @property
    def class_path(self) -> str:
        return self.typename

    @property
    def fields(self) -> LuaTable:
        return self.state

    def get(self, name, default=None):
        return self.state.get(name, default)

    def __getitem__(self, key):
        return self.state[key]

    def __contains__(self, key):
        return key in self.state

    def __repr__(self):
        shown = ", ".join(str(k) for k in list(self.state)[:6]) + (", ..." if len(self.state) > 6 else "")
        return f"TorchObject({self.typename}; {shown})"


class Torch7Info(CheckpointInfo):
    """Facts about a Torch7 file: its encoding and, for binary files, byte order and long size."""

    encoding: str = "binary"
    long_size: int = 8

    @property
    def format_name(self) -> str:
        extra = ", 4-byte longs (Windows build)" if self.encoding == "binary" and self.long_size == 4 else ""
        return f"Lua Torch7 serialization ({self.encoding}{extra})"

    @property
    def writer(self) -> str:
        return "Lua Torch7 (torch.save / File:writeObject)"


_PENDING = object()  # a frame needs more objects before its value is complete
_IN_PROGRESS = object()  # memo entry of a tensor whose storage is still being read
_NO_KEY = object()


def _text(raw: bytes):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


class _TableFrame:
    __slots__ = ("table", "left", "key")

    def __init__(self, table, pairs):
        self.table, self.left, self.key = table, pairs, _NO_KEY

    def accept(self, reader, value):
        if self.key is _NO_KEY:
            self.key = value
            return _PENDING
        key, self.key = self.key, _NO_KEY
        reader.store(self.table, key, value)
        self.left -= 1
        return self.table if self.left == 0 else _PENDING


class _FieldsFrame:
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def accept(self, reader, value):
        if not isinstance(value, LuaTable):
            reader.stream.fail(f"the fields of {self.obj.typename} are a {type(value).__name__}, not a table")
        self.obj.state = LuaTable(value)  # Lua copies the pairs into the new object
        return self.obj


class _UpvaluesFrame:
    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def accept(self, reader, value):
        self.function.upvalues = value
        return self.function


class _TensorFrame:
    __slots__ = ("index", "typename", "dtype", "size", "stride", "offset")

    def __init__(self, index, typename, dtype, size, stride, offset):
        self.index, self.typename, self.dtype = index, typename, dtype
        self.size, self.stride, self.offset = size, stride, offset

    def accept(self, reader, storage):
        reader.memo[self.index] = tensor = reader.tensor(self, storage)
        return tensor


class Torch7Reader:
    """Reads one object from a ``torch7_stream`` stream (binary or ascii)."""

    def __init__(self, stream, info: CheckpointInfo):
        self.stream = stream
        self.info = info
        self.memo = {}

    def read(self):
        stack = []
        while True:
            value = self._begin(stack)
            while value is not _PENDING:
                if not stack:
                    return value
                value = stack[-1].accept(self, value)
                if value is not _PENDING:
                    stack.pop()
            if len(stack) > MAX_NESTING:
                self.stream.fail(f"objects are nested more than {MAX_NESTING} deep")

    # -- one object's header; containers push a frame that collects what follows ---------------
    def _begin(self, stack):
        s = self.stream
        code = s.int()
        if code == NIL:
            return None
        if code == NUMBER:
            return lua_number(s.double())
        if code == BOOLEAN:
            return s.int() == 1
        if code == STRING:
            return _text(s.chars(s.int()))
        if code == FUNCTION:
            stack.append(_UpvaluesFrame(LuaFunction(s.chars(s.int()))))
            return _PENDING
        if code not in (TABLE, TORCH, SHARED_FUNCTION, LEGACY_SHARED_FUNCTION):
            s.fail(f"unknown type code {code} (expected 0-8)")
        index = s.int()
        if index in self.memo:
            seen = self.memo[index]
            if seen is _IN_PROGRESS:
                s.fail(f"object #{index} refers to a tensor that is still being read")
            return seen
        if code == TABLE:
            pairs = s.count(s.int(), "a table", 4)  # a pair takes two type codes at least
            self.memo[index] = table = LuaTable()
            if pairs == 0:
                return table
            stack.append(_TableFrame(table, pairs))
            return _PENDING
        if code == TORCH:
            return self._torch_object(index, stack)
        self.memo[index] = function = LuaFunction(s.chars(s.int()))
        stack.append(_UpvaluesFrame(function))
        return _PENDING

    def _torch_object(self, index, stack):
        s = self.stream
        first = _text(s.chars(s.int()))
        version = _version(first)
        typename = first if version is None else _text(s.chars(s.int()))
        if not isinstance(typename, str) or not typename:
            s.fail(f"unknown Torch class {typename!r:.60}")
        tensor = element_class(typename, "Tensor")
        if tensor is not None:
            ndim = s.int()
            if not 0 <= ndim <= MAX_DIMS:
                s.fail(f"{typename} with {ndim} dimensions")
            size, stride = s.longs(ndim), s.longs(ndim)
            offset = s.long() - 1  # stored 1-based
            self.memo[index] = _IN_PROGRESS
            stack.append(_TensorFrame(index, typename, tensor[0], size, stride, offset))
            return _PENDING
        storage = element_class(typename, "Storage")
        if storage is not None:
            count = s.long()
            if count < 0:
                s.fail(f"{typename} with a negative element count {count}")
            ref = StorageRef(f"#{index}", storage[0], check_count(count), storage[1])
            s.elements(ref)
            self.info.storages.append(ref)
            self.memo[index] = ref
            return ref
        if typename in CUSTOM_LAYOUT:
            s.fail(f"{typename} objects use their own serialization, which tracecap does not read")
        self.memo[index] = obj = TorchObject(typename, 0 if version is None else version)
        stack.append(_FieldsFrame(obj))
        return _PENDING

    # -- completing values ---------------------------------------------------------------------
    def tensor(self, frame: _TensorFrame, storage):
        s = self.stream
        size, stride = frame.size, frame.stride
        if storage is not None and not (isinstance(storage, StorageRef) and storage.dtype == frame.dtype):
            s.fail(f"a {frame.typename} needs a storage of {frame.dtype}, the file gives {_kind(storage)}")
        if not size:  # Torch7 has no 0-d tensors: no dimensions means empty
            return torch.empty((0,), dtype=frame.dtype)
        if min(size) < 0 or min(stride) < 0:
            s.fail(f"a {frame.typename} has a negative size or stride: {size} / {stride}")
        numel = math.prod(size)
        if storage is None:
            if numel == 0:
                return torch.empty(size, dtype=frame.dtype)
            s.fail(f"a {frame.typename} of shape {size} has no storage")
        if frame.offset < 0:
            s.fail(f"a {frame.typename} has storage offset {frame.offset + 1} (must be >= 1)")
        if numel > max(MAX_REPEAT * storage.numel, 1 << 16):
            s.fail(f"a {frame.typename} of shape {size} ({numel} elements) over a storage of "
                   f"{storage.numel}: implausibly many repeated elements")
        try:
            return build_tensor(storage, frame.offset, tuple(size), tuple(stride))
        except CheckpointError as exc:
            s.fail(str(exc))

    def store(self, table: LuaTable, key, value):
        if key is None:
            self.stream.fail("a table key is nil")
        if isinstance(key, float) and math.isnan(key):
            self.stream.fail("a table key is NaN")
        if isinstance(key, (dict, list)):
            key = TableKey(key)
        elif type(key) in (bool, int) and key in (0, 1) and key in table \
                and any(type(k) in (bool, int) and k == key and type(k) is not type(key) for k in table):
            key = TableKey(key)  # Lua's true and 1 (false and 0) are different keys
        if value is None:
            table.pop(key, None)  # assigning nil removes
        else:
            table[key] = value


def _version(text):
    """Torch7's version number from "V <number>", or None (a pre-versioning file's class name)."""
    if not isinstance(text, str) or not text.startswith("V "):
        return None
    try:
        return lua_number(float(text[2:]))
    except ValueError:
        return None


def _kind(value) -> str:
    if isinstance(value, StorageRef):
        return f"a storage of {value.dtype}"
    if isinstance(value, TorchObject):
        return f"a {value.typename}"
    return f"a {type(value).__name__}"


def _read(f, size, layout, long_size=8):
    encoding, byteorder = layout
    if encoding == "ascii":
        stream = AsciiStream(f, size)
    else:
        stream = BinaryStream(f, size, byteorder, long_size)
    info = Torch7Info(path="", format="torch7", file_size=size, byteorder=byteorder or "n/a (text)")
    info.encoding = encoding
    info.long_size = long_size
    obj = Torch7Reader(stream, info).read()
    return obj, info, stream.remaining


def read_torch7(f, size: int, name: str, nested_loader=None):
    """(object, info) for a Torch7 file; the ``checkpoint.load`` reader signature."""
    f.seek(0)
    layout = layout_of(f.read(16))
    if layout is None:
        raise CheckpointError(f"{name} is not a Lua Torch7 file")
    try:
        obj, info, left = _read(f, size, layout)
    except CheckpointError as first:
        if layout[0] != "binary":
            raise
        try:  # Windows builds of Torch7 wrote 4-byte longs; accept that only if it reads exactly
            obj, info, left = _read(f, size, layout, long_size=4)
        except CheckpointError:
            raise first from None
        if left:
            raise first from None
    info.path = name
    if left:
        info.notes.append(f"{left} bytes after the saved object were ignored (Torch7 reads one object)")
    return obj, info


def load_torch7(path_or_bytes):
    """The object in a Torch7 file (path or bytes), read as data; ``CheckpointError`` if damaged."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        return read_torch7(io.BytesIO(data), len(data), "data")[0]
    from .load import read_checkpoint
    ck = read_checkpoint(path_or_bytes)
    if ck.info.format != "torch7":
        raise CheckpointError(f"{path_or_bytes} is a {ck.info.format_name} file, not a Lua Torch7 file")
    return ck.obj
