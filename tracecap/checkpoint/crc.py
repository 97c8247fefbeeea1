"""CRC-32 (the zip polynomial) of the bytes read from a checkpoint: ISA-L's when it is installed.

zlib's ``crc32`` runs at about 2-4 GB/s here, slower than copying the bytes out of the page cache,
so for a zip checkpoint the check alone cost more than ``torch.load`` spends reading the file.
ISA-L (the optional ``isal`` package, ``pip install tracecap[fast]``) computes the same CRC with
carry-less multiplication at 10-20 GB/s. Without it, zlib's result is the same, only slower.
"""
from __future__ import annotations

import zlib

try:  # optional: same function, same results
    from isal.isal_zlib import crc32 as _fast_crc32
except ImportError:  # pragma: no cover - depends on the environment
    _fast_crc32 = None

#: True when the fast implementation is in use
FAST = _fast_crc32 is not None


def crc32(data, value: int = 0) -> int:
    """``zlib.crc32(data, value)``, computed by ISA-L when available."""
    return (_fast_crc32 or zlib.crc32)(data, value)
