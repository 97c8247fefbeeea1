"""The primitive values of a Lua Torch7 file: ints, longs, doubles, raw bytes, element runs.

Torch7's ``torch.File`` writes every value in one of two encodings, chosen per file:

* **binary** (``torch.save`` default): C values as they lie in memory - int32, ``long``
  (8 bytes on Linux/macOS, 4 on Windows builds), IEEE doubles - in the writing machine's byte
  order.  The file does not record that order, but its first value is always a type code
  0..8, so its first four bytes tell little-endian (``0N 00 00 00``) from big-endian
  (``00 00 00 0N``).  Both are read; elements are byte-swapped to the host order.
* **ascii** (``torch.save(f, x, 'ascii')``): numbers as ``%d`` / ``%ld`` / ``%.17g`` text, the
  elements of one write separated by spaces and the write ended by a newline, which the reader
  consumes (``isAutoSpacing``); char/byte runs (strings, byte storages) are raw bytes.

Every length the file claims is checked against the bytes that remain before anything is read
or allocated.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import torch

from tracecap.errors import CheckpointError

from .source import Region
from .storages import StorageRef, allocate, finish_bytes

MAX_TYPE_CODE = 8
_WHITESPACE = b" \t\n\r\v\f"


def layout_of(head: bytes):
    """("binary", "little"|"big") or ("ascii", None) if ``head`` opens a Torch7 file, else None."""
    if len(head) >= 4 and head[1:4] == b"\0\0\0" and head[0] <= MAX_TYPE_CODE:
        return "binary", "little"
    if len(head) >= 4 and head[:3] == b"\0\0\0" and head[3] <= MAX_TYPE_CODE:
        return "binary", "big"
    if len(head) >= 2 and head[:1].isdigit() and int(head[:1]) <= MAX_TYPE_CODE and head[1:2] == b"\n":
        return "ascii", None
    return None


class Torch7Stream:
    """Shared bookkeeping: where we are, for error messages, and element budgets."""

    name = "file"

    def fail(self, message: str):
        raise CheckpointError(f"Lua Torch7 file: at byte {self.tell()}: {message}")

    def count(self, value: int, what: str, unit: int = 1) -> int:
        """A length read from the file: non-negative and small enough for the bytes left."""
        if value < 0:
            self.fail(f"{what} has a negative length {value}")
        if value * unit > self.remaining:
            self.fail(f"{what} claims {value} items ({value * unit} bytes at least) but only "
                      f"{self.remaining} bytes are left; the file is truncated or corrupt")
        return value


class BinaryStream(Torch7Stream):
    """Native-layout values in a given byte order and long size."""

    def __init__(self, f, size: int, byteorder: str, long_size: int = 8):
        self.region = Region(f, 0, size, "Lua Torch7 file")
        self.byteorder = byteorder
        self.long_size = long_size
        mark = "<" if byteorder == "little" else ">"
        self._int = struct.Struct(mark + "i")
        self._long = struct.Struct(mark + ("q" if long_size == 8 else "i"))
        self._double = struct.Struct(mark + "d")
        self._mark = mark

    @property
    def remaining(self) -> int:
        return self.region.remaining

    def tell(self) -> int:
        return self.region.tell()

    def _take(self, n: int) -> bytes:
        if n > self.region.remaining:
            self.fail(f"the file ends here: {n} more bytes needed, {self.region.remaining} left")
        return self.region.read(n)

    def int(self) -> int:
        return self._int.unpack(self._take(4))[0]

    def long(self) -> int:
        return self._long.unpack(self._take(self.long_size))[0]

    def longs(self, n: int) -> list:
        self.count(n, "a list of longs", self.long_size)
        data = self._take(n * self.long_size)
        return list(struct.unpack(f"{self._mark}{n}{'q' if self.long_size == 8 else 'i'}", data))

    def double(self) -> float:
        return self._double.unpack(self._take(8))[0]

    def chars(self, n: int) -> bytes:
        return self._take(self.count(n, "a string"))

    def elements(self, ref: StorageRef) -> None:
        """Fill ``ref`` with its ``numel`` raw elements (longs widened if the file has 4-byte ones)."""
        elsize = ref.dtype.itemsize
        narrow_longs = ref.dtype is torch.int64 and self.long_size == 4
        on_disk = 4 if narrow_longs else elsize
        self.count(ref.numel, f"storage {ref.key}", on_disk)
        allocate(ref, ref.numel * elsize)
        if narrow_longs:
            raw = np.frombuffer(self._take(ref.numel * 4), dtype=self._mark + "i4")
            ref.data.numpy().view(np.int64)[:] = raw
            ref.filled = True
            return
        from .legacy_pickle_format import read_into  # (legacy_pickle_format imports detect, which imports us)
        read_into(self.region, ref, self.byteorder == "big")


class AsciiStream(Torch7Stream):
    """Text-encoded values, parsed from the file's bytes held in memory (bounded by the file size)."""

    byteorder = None
    long_size = None

    def __init__(self, f, size: int):
        f.seek(0)
        self.data = f.read(size)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def tell(self) -> int:
        return self.pos

    def _end_of_write(self):
        if self.pos < len(self.data) and self.data[self.pos:self.pos + 1] == b"\n":
            self.pos += 1

    def _token(self, what: str) -> bytes:
        data, pos, end = self.data, self.pos, len(self.data)
        while pos < end and data[pos] in _WHITESPACE:
            pos += 1
        start = pos
        while pos < end and data[pos] not in _WHITESPACE and pos - start < 64:
            pos += 1
        if start == pos:
            self.pos = pos
            self.fail(f"the file ends where {what} was expected")
        self.pos = pos
        return data[start:pos]

    def _parsed(self, parse, what: str):
        token = self._token(what)
        try:
            return parse(token)
        except ValueError:
            self.fail(f"expected {what}, found {token[:20]!r}")

    def _integer(self, what: str) -> int:
        return self._parsed(int, what)

    def _number(self, what: str) -> float:
        return self._parsed(float, what)  # accepts C's inf, -inf, nan, like fscanf("%lg")

    def int(self) -> int:
        value = self._integer("an integer")
        self._end_of_write()
        return value

    def long(self) -> int:
        return self.int()

    def longs(self, n: int) -> list:
        self.count(n, "a list of longs")
        values = [self._integer("an integer") for _ in range(n)]
        if n:
            self._end_of_write()
        return values

    def double(self) -> float:
        value = self._number("a number")
        self._end_of_write()
        return value

    def chars(self, n: int) -> bytes:
        self.count(n, "a string")
        text = self.data[self.pos:self.pos + n]
        self.pos += n
        self._end_of_write()
        return text

    def elements(self, ref: StorageRef) -> None:
        """Each element at least one character: the claim is bounded by the text left."""
        self.count(ref.numel, f"storage {ref.key}")
        allocate(ref, ref.numel * ref.dtype.itemsize)
        out = ref.data.numpy().view(_NUMPY[ref.dtype])
        if ref.dtype in (torch.uint8, torch.int8):  # written raw, like strings
            out[:] = np.frombuffer(self.chars(ref.numel), dtype=out.dtype)
        elif ref.dtype.is_floating_point:
            values = [self._number("a number") for _ in range(ref.numel)]
            out[:] = np.array(values, dtype=np.float64)  # %.9g / %.17g text round-trips exactly
            if ref.numel:
                self._end_of_write()
        else:
            values = [self._integer("an integer") for _ in range(ref.numel)]
            info = np.iinfo(out.dtype)
            if values and (min(values) < info.min or max(values) > info.max):
                self.fail(f"storage {ref.key} holds a value outside the range of {ref.dtype}")
            out[:] = np.array(values, dtype=np.int64)
            if ref.numel:
                self._end_of_write()
        finish_bytes(ref, False)


_NUMPY = {torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16, torch.int32: np.int32,
          torch.int64: np.int64, torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def lua_number(value: float):
    """A Lua number as Python: integral values (as Lua 5.1 has only doubles) become ints."""
    if value.is_integer() and abs(value) < 2 ** 53 and not (value == 0 and math.copysign(1, value) < 0):
        return int(value)
    return value
