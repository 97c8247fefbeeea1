"""The legacy pickle format (torch 0.1.10 - 1.5), and plain pickles that share its first step.

Layout, front to back, all in one stream:

1. pickle: magic number 0x1950A86A20F9469CFC6C
2. pickle: protocol version 1001
3. pickle: sys_info ``{"protocol_version", "little_endian", "type_sizes"}``
4. pickle: the object; storages appear as persistent ids
   ``("storage", StorageClass, root_key, location, root_numel, view_metadata)`` with
   ``view_metadata = (view_key, offset, view_numel)`` or None, and module classes as
   ``("module", cls, source_file, source)``
5. pickle: list of root storage keys, in the order their data follows
6. per key: int64 element count, then the raw elements (byte order per sys_info)

Tensors are rebuilt while step 4 runs, on storages allocated then and filled in step 6.
"""
from __future__ import annotations

import struct

from tracecap.errors import CheckpointError

from .detect import LEGACY_MAGIC
from .placeholders import ClassRef
from .policy import CheckpointPolicy
from .result import CheckpointInfo
from .source import Region
from .storages import StorageRef, allocate, check_count, finish_bytes
from .tensor_rebuild import StorageType
from .unpickler import Policy, RestrictedUnpickler

PROTOCOL_VERSION = 1001


class StorageTable:
    """Storages by key, with a memory budget: all their bytes must fit in what the file has left."""

    def __init__(self, region: Region, info: CheckpointInfo):
        self.region = region
        self.info = info
        self.roots = {}
        self.views = {}
        self.allocated = 0

    def budget(self) -> int:
        return self.region.remaining - self.allocated

    def root(self, key, storage_type, location, numel) -> StorageRef:
        if not isinstance(storage_type, StorageType):
            raise CheckpointError(f"storage {key!r} has an unknown storage type {storage_type!r}")
        if not isinstance(key, str) or not isinstance(location, str):
            raise CheckpointError(f"malformed storage reference {key!r} / {location!r}")
        ref = self.roots.get(key)
        if ref is None:
            ref = StorageRef(key, storage_type.dtype, check_count(numel, f"storage {key!r}"), location)
            allocate(ref, self.budget() - 8)  # 8: the element count stored before the data
            self.allocated += ref.nbytes + 8
            self.roots[key] = ref
            self.info.storages.append(ref)
        elif ref.dtype != storage_type.dtype or ref.numel != numel:
            raise CheckpointError(f"storage {key!r} is described twice with different types or sizes")
        return ref

    def view(self, root: StorageRef, meta) -> StorageRef:
        if type(meta) is not tuple or len(meta) != 3:
            raise CheckpointError(f"malformed storage view metadata {meta!r:.80}")
        key, offset, numel = meta
        if type(offset) is not int or type(numel) is not int or offset < 0 or numel < 0 \
                or offset + numel > root.numel:
            raise CheckpointError(
                f"storage view {key!r} ({numel} elements at {offset}) exceeds its root of {root.numel} elements")
        ref = self.views.get(key)
        if ref is None:
            ref = self.views[key] = StorageRef(key, root.dtype, numel, root.location, root=root, offset=offset)
        elif ref.root is not root or ref.offset != offset or ref.numel != numel:
            raise CheckpointError(f"storage view {key!r} is described twice differently")
        return ref

    def persistent_load(self, pid):
        if type(pid) is not tuple or not pid:
            raise CheckpointError(f"malformed persistent id {pid!r:.80}")
        kind = pid[0]
        if kind == "module" and len(pid) == 4:
            cls = pid[1]
            if isinstance(cls, ClassRef) and isinstance(pid[2], str):
                cls.source_file, cls.source = pid[2], pid[3]
                self.info.module_sources[cls.path] = pid[2]
            return cls
        if kind == "storage" and len(pid) == 6:
            _, storage_type, key, location, numel, view_meta = pid
            root = self.root(key, storage_type, location, numel)
            return root if view_meta is None else self.view(root, view_meta)
        raise CheckpointError(f"unknown persistent id {pid!r:.80}")


def read_pickle_or_legacy(f, size: int, name: str, nested_loader) -> tuple:
    """(object, info) for a legacy checkpoint or a plain pickle (decided by the first value)."""
    region = Region(f, 0, size, name)
    info = CheckpointInfo(path=name, format="pickle", file_size=size)
    plain = CheckpointPolicy(nested_loader=nested_loader)
    first = RestrictedUnpickler(region, plain)
    obj = first.load()
    if not (type(obj) is int and obj == LEGACY_MAGIC):
        if region.remaining:  # a legacy file with a damaged magic number, or junk after a pickle
            what = f"a wrong magic number {obj:#x}" if type(obj) is int else "extra data"
            raise CheckpointError(f"{name}: {region.remaining} unexpected bytes after the first pickle; "
                                  f"a legacy checkpoint with {what}, or not a checkpoint")
        collect_facts(info, plain, first)
        return obj, info
    info.format = "legacy"
    header = Policy()
    info.format_version = RestrictedUnpickler(region, header).load()
    if info.format_version != PROTOCOL_VERSION:
        raise CheckpointError(f"{name}: legacy protocol version {info.format_version!r} is not supported "
                              f"(expected {PROTOCOL_VERSION})")
    sys_info = RestrictedUnpickler(region, header).load()
    info.sys_info = sys_info
    big_endian = sys_info_big_endian(sys_info, name)
    info.byteorder = "big" if big_endian else "little"

    table = StorageTable(region, info)
    policy = CheckpointPolicy(persistent_load=table.persistent_load, nested_loader=nested_loader)
    main = RestrictedUnpickler(region, policy)
    obj = main.load()
    collect_facts(info, policy, main)
    keys = RestrictedUnpickler(region, header).load()
    if type(keys) is not list:
        raise CheckpointError(f"{name}: the storage key list is missing or malformed")
    read_storage_data(region, table.roots, keys, big_endian, name)
    return obj, info


def sys_info_big_endian(sys_info, name) -> bool:
    if not isinstance(sys_info, dict) or type(sys_info.get("little_endian")) is not bool:
        raise CheckpointError(f"{name}: sys_info record is malformed: {sys_info!r:.120}")
    return not sys_info["little_endian"]


def read_storage_data(region: Region, roots: dict, keys, big_endian: bool, name: str) -> None:
    """Step 6: each listed storage's element count (checked) and bytes, straight into place."""
    count_fmt = struct.Struct(">q" if big_endian else "<q")
    for key in keys:
        ref = roots.get(key) if isinstance(key, str) else None
        if ref is None:
            raise CheckpointError(f"{name}: data for storage {key!r:.40} that the pickle never uses")
        if ref.filled:
            raise CheckpointError(f"{name}: storage {key!r} has its data twice")
        read_counted(region, ref, count_fmt, big_endian)
    missing = [k for k, r in roots.items() if not r.filled]
    if missing:
        raise CheckpointError(f"{name}: no data for storage(s) {', '.join(missing[:5])}; the file is truncated")


def read_counted(region: Region, ref: StorageRef, count_fmt, big_endian: bool) -> None:
    """An int64 element count followed by the elements (legacy and tar storages)."""
    (count,) = count_fmt.unpack(region.read(8))
    if count != ref.numel:
        raise CheckpointError(f"{region.name}: storage {ref.key!r} should hold {ref.numel} elements, "
                              f"its data header says {count}")
    read_into(region, ref, big_endian)


def read_into(region: Region, ref: StorageRef, big_endian: bool) -> None:
    """The raw elements of ``ref``, copied once, straight into its memory."""
    got = region.readinto(ref.data.numpy())
    if got != ref.nbytes:
        raise CheckpointError(f"{region.name} is truncated inside the data of storage {ref.key!r} "
                              f"({got} of {ref.nbytes} bytes)")
    finish_bytes(ref, big_endian)


def collect_facts(info: CheckpointInfo, policy: CheckpointPolicy, unpickler: RestrictedUnpickler) -> None:
    info.classes = sorted(set(info.classes) | set(policy.unknown))
    info.rebuilders = sorted(set(info.rebuilders) | policy.used)
    info.python2 = info.python2 or unpickler.looks_python2
    info.notes.extend(n for n in policy.notes if n not in info.notes)
