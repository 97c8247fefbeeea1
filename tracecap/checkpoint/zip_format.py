"""The zip format (torch >= 1.6): ``<dir>/data.pkl`` plus one uncompressed record per storage.

Records under one top directory (any name, usually ``archive``):

* ``data.pkl`` — the object; storages are persistent ids ``("storage", StorageClass, key,
  location, numel)`` whose bytes are record ``data/<key>``
* ``byteorder`` — ``little`` or ``big`` (absent in early files: little)
* ``version``, ``.format_version``, ``.storage_alignment``, ``.data/serialization_id`` — metadata

``zipfile`` validates the central directory; each record's bytes are then read in place from
the local header's data offset, size-checked against the storage's claim and CRC-checked
(``crc``: ISA-L's CRC when installed). With zlib's slower one, the CRC of a big storage is computed
by a worker thread while the next ones are read and the pickle is decoded (``zlib.crc32`` releases
the GIL); every result is checked before the object is returned, so a damaged record still fails
the load.
"""
from __future__ import annotations

import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor

import torch

from tracecap.errors import CheckpointError

from . import crc, torchscript
from .legacy_pickle_format import collect_facts
from .policy import CheckpointPolicy
from .result import CheckpointInfo
from .source import CappedFile, Region
from .storages import StorageRef, allocate, check_count, finish_bytes
from .tensor_rebuild import StorageType
from .unpickler import RestrictedUnpickler

_LOCAL_HEADER = struct.Struct("<4s22xHH")
METADATA_RECORDS = ("version", ".format_version", ".storage_alignment", ".data/serialization_id", "byteorder")


class ZipRecords:
    """Bounded access to stored records of one archive."""

    def __init__(self, f, size: int, name: str):
        self.f, self.size, self.name = f, size, name
        try:
            self.zf = zipfile.ZipFile(CappedFile(f, size))
            self.infos = {i.filename: i for i in self.zf.infolist()}
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, struct.error,
                NotImplementedError, UnicodeError, OverflowError) as exc:
            raise CheckpointError(f"{name}: damaged zip archive (central directory unreadable): {exc}") from exc

    def region(self, record: str) -> Region:
        info = self.infos.get(record)
        if info is None:
            raise CheckpointError(f"{self.name}: zip record {record!r} is missing")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CheckpointError(f"{self.name}: zip record {record!r} is compressed; torch writes records "
                                  f"uncompressed (was the file re-zipped?)")
        if not 0 <= info.header_offset <= self.size - _LOCAL_HEADER.size:
            raise CheckpointError(f"{self.name}: damaged zip archive: record {record!r} points to offset "
                                  f"{info.header_offset}, outside the file")
        self.f.seek(info.header_offset)
        head = self.f.read(_LOCAL_HEADER.size)
        if len(head) != _LOCAL_HEADER.size:
            raise CheckpointError(f"{self.name} is truncated: local header of {record!r} is cut off")
        magic, name_len, extra_len = _LOCAL_HEADER.unpack(head)
        if magic != b"PK\x03\x04":
            raise CheckpointError(f"{self.name}: zip record {record!r} has a damaged local header")
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        end = start + info.file_size
        if end > self.size:
            raise CheckpointError(f"{self.name} is truncated: record {record!r} needs bytes {start}..{end}, "
                                  f"the file has {self.size}")
        return Region(self.f, start, end, f"{self.name}:{record}")

    def read_small(self, record: str, limit: int = 1 << 12):
        region = self.region(record)
        if region.remaining > limit:
            raise CheckpointError(f"{self.name}: metadata record {record!r} is implausibly large")
        data = region.read(region.remaining)
        self.check_crc(record, data)
        return data

    def check_crc(self, record: str, data) -> None:
        if crc.crc32(data) != self.infos[record].CRC:
            raise CheckpointError(f"{self.name}: zip record {record!r} is damaged (CRC mismatch)")


def _prefix(records: ZipRecords) -> str:
    """The top directory holding data.pkl (TorchScript archives have one too)."""
    names = records.infos
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkls:
        raise CheckpointError(f"{records.name} is a zip file but not a PyTorch checkpoint (no <dir>/data.pkl)")
    if len(pkls) > 1:
        raise CheckpointError(f"{records.name}: zip holds several checkpoints ({', '.join(pkls[:3])})")
    return pkls[0][: -len("data.pkl")]


class _StorageCrcs:
    """CRC checks of storage records: at once, or (zlib's slow CRC, big records) on a worker thread,
    all done by :meth:`finish`."""

    THREAD_FROM = 1 << 20  # bytes; below this a thread costs more than it saves

    def __init__(self, records: ZipRecords):
        self.records, self.pending, self._pool = records, [], None

    def add(self, record: str, data) -> None:
        if crc.FAST or data.nbytes < self.THREAD_FROM:
            self.records.check_crc(record, data)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tracecap-crc")
        self.pending.append((record, self._pool.submit(crc.crc32, data)))

    def finish(self) -> None:
        pending, self.pending = self.pending, []
        for record, result in pending:
            if result.result() != self.records.infos[record].CRC:
                raise CheckpointError(f"{self.records.name}: zip record {record!r} is damaged (CRC mismatch)")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def read_zip(f, size: int, name: str, nested_loader, progress=None) -> tuple:
    """The object and facts of a zip checkpoint; ``progress(done, total)`` hears of every storage read."""
    crcs = _StorageCrcs(ZipRecords(f, size, name))
    try:
        result = _read_zip(crcs, name, size, nested_loader, progress)
        crcs.finish()
    finally:
        crcs.close()
    return result


def _read_zip(crcs: _StorageCrcs, name: str, size: int, nested_loader, progress) -> tuple:
    records = crcs.records
    prefix = _prefix(records)
    info = CheckpointInfo(path=name, format="zip", file_size=size)
    for rec in METADATA_RECORDS:
        if prefix + rec in records.infos:
            raw = records.read_small(prefix + rec)
            info.records[rec] = raw.decode("utf-8", "replace").strip()
    byteorder = info.records.get("byteorder", "little")
    if byteorder not in ("little", "big"):
        raise CheckpointError(f"{name}: byteorder record says {byteorder!r}; expected 'little' or 'big'")
    info.byteorder = byteorder
    info.format_version = info.records.get("version")
    big_endian = byteorder == "big"
    storages = {}
    budget = [size]
    data_dir = prefix + "data/"
    total = sum(i.file_size for n, i in records.infos.items() if n.startswith(data_dir))
    done = [0]

    def persistent_load(pid):
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            raise CheckpointError(f"{name}: unknown persistent id {pid!r:.80}")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, StorageType) or not isinstance(key, str) or not isinstance(location, str):
            raise CheckpointError(f"{name}: malformed storage reference {pid!r:.80}")
        ref = storages.get(key)
        if ref is not None:
            if ref.dtype != storage_type.dtype or ref.numel != numel:
                raise CheckpointError(f"{name}: storage {key!r} is described twice with different sizes")
            return ref
        ref = StorageRef(key, storage_type.dtype, check_count(numel, f"storage {key!r}"), location)
        region = records.region(f"{prefix}data/{key}")
        if region.remaining != ref.nbytes:
            raise CheckpointError(f"{name}: storage {key!r} claims {ref.nbytes} bytes ({numel} x {ref.dtype}) "
                                  f"but its record holds {region.remaining}")
        allocate(ref, budget[0])
        budget[0] -= ref.nbytes
        data = ref.data.numpy()
        if region.readinto(data) != ref.nbytes:
            raise CheckpointError(f"{name} is truncated: storage {key!r} is cut off")
        crcs.add(f"{prefix}data/{key}", data)  # of the bytes as read, before any byte swap
        if big_endian or ref.dtype is torch.bool:
            crcs.finish()  # finish_bytes changes them in place
        finish_bytes(ref, big_endian)
        storages[key] = ref
        info.storages.append(ref)
        if progress is not None:
            done[0] += ref.nbytes
            progress(min(done[0], total), total)
        return ref

    policy = CheckpointPolicy(persistent_load=persistent_load, nested_loader=nested_loader)
    region = records.region(prefix + "data.pkl")
    data = region.read(region.remaining)  # in memory: storage reads below move the file position
    records.check_crc(prefix + "data.pkl", data)
    main = RestrictedUnpickler(Region.of_bytes(data, f"{name}:{prefix}data.pkl"), policy)
    obj = main.load()
    collect_facts(info, policy, main)
    if torchscript.is_torchscript(records.infos):
        torchscript.annotate(info, records, prefix)
    if progress is not None and done[0] != total:
        progress(total, total)  # records no tensor refers to
    return obj, info
