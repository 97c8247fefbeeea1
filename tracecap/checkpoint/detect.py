"""Tell the checkpoint formats apart from their first bytes, and name the usual impostors."""
from __future__ import annotations

from tracecap.errors import CheckpointError

from .torch7_stream import layout_of

# The legacy format opens with pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_HEADER = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little") + b"."

# Bytes that can start a protocol 0/1 pickle (opcodes that are valid as a first instruction).
_PICKLE_START = set(b"(]})NIJKLMFGSTUVXcdl.\x88\x89BC")


def detect_format(head: bytes, size: int, name: str = "file") -> str:
    """"zip", "tar", "legacy", "pickle" ("pickle" may still turn out to be legacy) or "torch7"."""
    if size == 0:
        raise CheckpointError(f"{name} is empty")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(LEGACY_HEADER):
        return "legacy"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if head[:2] == b"\x1f\x8b":
        raise CheckpointError(f"{name} is gzip-compressed; decompress it first (e.g. gunzip)")
    if layout_of(head) is not None:
        return "torch7"
    if head[:1] and head[0] in _PICKLE_START:
        return "pickle"
    raise CheckpointError(
        f"{name} is not a PyTorch checkpoint: unknown format (first bytes {head[:8].hex(' ')}); "
        f"expected a zip archive, a tar archive or a pickle")
