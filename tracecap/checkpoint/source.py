"""A bounded, sequential window on a binary file.

Every length in a checkpoint is a claim made by the file.  Reading through ``Region`` checks each
claim against the bytes that really remain *before* reading, so a forged length can neither make
us allocate gigabytes nor read past the part of the file it belongs to (a tar member, say).
"""
from __future__ import annotations

import io

from tracecap.errors import CheckpointError


class Region:
    """Bytes ``[start, end)`` of seekable file ``f``, read front to back.

    Reads assume nobody else moves ``f`` between them: create a Region right before using it
    (the constructor seeks) and finish with it before another Region of the same file reads.
    """

    def __init__(self, f, start: int = 0, end: int | None = None, name: str = "file"):
        if end is None:
            end = f.seek(0, io.SEEK_END)
        self._f = f
        self.start = start
        self.end = end
        self.name = name
        self._pos = start
        f.seek(start)

    @classmethod
    def of_bytes(cls, data, name="data"):
        """A Region over bytes already in memory (a zip record's pickle): reads are slices, no file calls."""
        return BytesRegion(bytes(data), name)

    @property
    def remaining(self) -> int:
        return self.end - self._pos

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int) -> None:
        if not self.start <= pos <= self.end:
            raise CheckpointError(f"{self.name}: offset {pos} lies outside bytes {self.start}..{self.end}")
        self._pos = pos
        self._f.seek(pos)

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or CheckpointError if the region holds fewer."""
        if n > self.end - self._pos:
            raise CheckpointError(
                f"{self.name} is truncated: needs {n} bytes at offset {self._pos}, "
                f"only {self.end - self._pos} remain")
        data = self._f.read(n)
        if len(data) != n:  # the file shrank underneath us
            raise CheckpointError(f"{self.name} is truncated at offset {self._pos + len(data)}")
        self._pos += n
        return data

    def readline(self, limit: int = 1 << 16) -> bytes:
        """One ``\\n``-terminated line (text pickle opcodes); refuses unterminated or huge lines."""
        line = self._f.readline(min(limit, self.end - self._pos))
        self._pos += len(line)
        if not line.endswith(b"\n"):
            raise CheckpointError(f"{self.name}: unterminated text line near offset {self._pos}")
        return line

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.end - self._pos)
        got = self._f.readinto(view[:n]) if n else 0
        self._pos += got
        return got

    def skip(self, n: int) -> None:
        if n < 0 or n > self.end - self._pos:
            raise CheckpointError(f"{self.name} is truncated: cannot skip {n} bytes at offset {self._pos}")
        self.seek(self._pos + n)


class BytesRegion(Region):
    """:class:`Region` over a bytes object: the same checks, each read one slice (the unpickler reads per opcode)."""

    def __init__(self, data: bytes, name: str = "data"):
        self._data = data
        self._f = None
        self.start, self.end, self.name = 0, len(data), name
        self._pos = 0

    def seek(self, pos: int) -> None:
        if not 0 <= pos <= self.end:
            raise CheckpointError(f"{self.name}: offset {pos} lies outside bytes 0..{self.end}")
        self._pos = pos

    def read(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if n < 0 or end > self.end:
            raise CheckpointError(f"{self.name} is truncated: needs {n} bytes at offset {pos}, "
                                  f"only {self.end - pos} remain")
        self._pos = end
        return self._data[pos:end]

    def readline(self, limit: int = 1 << 16) -> bytes:
        pos = self._pos
        stop = self._data.find(b"\n", pos, min(self.end, pos + limit))
        if stop < 0:
            self._pos = min(self.end, pos + limit)
            raise CheckpointError(f"{self.name}: unterminated text line near offset {self._pos}")
        self._pos = stop + 1
        return self._data[pos:stop + 1]

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.end - self._pos)
        view[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


class CappedFile:
    """File wrapper for ``tarfile``/``zipfile``: a read never asks for more than the file holds.

    Both modules read lengths taken from headers (pax records, central directory size); a forged
    length would otherwise make ``read(n)`` allocate ``n`` bytes before noticing the file is short.
    """

    def __init__(self, f, size: int):
        self._f = f
        self._size = size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._f.tell())
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def seekable(self):
        return True

    def readable(self):
        return True

    def writable(self):
        return False

    def flush(self):
        pass
