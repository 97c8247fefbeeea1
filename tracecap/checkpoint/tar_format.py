"""The tar format (torch <= 0.1.9): four members, read in place without extracting anything.

* ``sys_info`` — pickle ``{"protocol_version": 1000, "little_endian", "type_sizes"}``
* ``storages`` — pickle count; per storage pickle ``(key, location, StorageClass)`` then int64
  element count and raw elements; finally pickle list of views ``(key, root_key, offset, numel)``
* ``tensors`` — pickle count; per tensor pickle ``(key, storage_key, TensorClass)``, int32 ndim,
  4 unused bytes, ndim int64 sizes, ndim int64 strides, int64 storage offset
* ``pickle`` — the object; persistent id ``"<key>"`` names a tensor or storage above, and a tuple
  ``(cls, source_file, source)`` names a module class

Members are located by header and read through bounded regions of the original file; names are
checked so a hostile archive (``../x``, links, devices) is refused rather than "extracted".
"""
from __future__ import annotations

import struct
import tarfile

from tracecap.errors import CheckpointError

from .legacy_pickle_format import collect_facts, read_into, sys_info_big_endian
from .placeholders import ClassRef
from .policy import CheckpointPolicy
from .result import CheckpointInfo
from .source import CappedFile, Region
from .storages import StorageRef, allocate, build_tensor, check_count
from .tensor_rebuild import StorageType, TensorType
from .unpickler import Policy, RestrictedUnpickler

MEMBERS = ("sys_info", "storages", "tensors", "pickle")
MAX_DIMS = 64


def _members(f, size: int, name: str) -> dict:
    """Member name -> (start, end) byte span, after refusing anything a checkpoint cannot contain."""
    f.seek(0)  # tarfile starts reading wherever the file stands
    try:
        with tarfile.open(fileobj=CappedFile(f, size), mode="r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError, struct.error) as exc:
        raise CheckpointError(f"{name}: damaged tar archive: {exc}") from exc
    found = {}
    for m in members:
        clean = m.name[2:] if m.name.startswith("./") else m.name
        if m.name.startswith(("/", "\\")) or ".." in m.name.replace("\\", "/").split("/"):
            raise CheckpointError(f"{name}: tar member {m.name!r} points outside the archive; refusing the file")
        if clean not in MEMBERS:
            raise CheckpointError(f"{name}: unexpected tar member {m.name!r} (a torch tar checkpoint has "
                                  f"only {', '.join(MEMBERS)})")
        if not m.isreg():
            raise CheckpointError(f"{name}: tar member {m.name!r} is not a regular file (link or device); refusing")
        if clean in found:
            raise CheckpointError(f"{name}: tar member {clean!r} appears twice")
        if m.offset_data + m.size > size:
            raise CheckpointError(f"{name} is truncated: tar member {clean!r} needs {m.size} bytes "
                                  f"at offset {m.offset_data}")
        found[clean] = (m.offset_data, m.offset_data + m.size)
    missing = [m for m in MEMBERS if m not in found]
    if missing:
        raise CheckpointError(f"{name}: tar checkpoint lacks member(s) {', '.join(missing)}")
    return found


def read_tar(f, size: int, name: str, nested_loader) -> tuple:
    spans = _members(f, size, name)

    def member(key):  # a Region owns the file position: make each one just before using it
        return Region(f, *spans[key], f"{name}:{key}")

    info = CheckpointInfo(path=name, format="tar", file_size=size)
    header = Policy()
    sys_info = RestrictedUnpickler(member("sys_info"), header).load()
    info.sys_info = sys_info
    big_endian = sys_info_big_endian(sys_info, name)
    info.byteorder = "big" if big_endian else "little"
    info.format_version = sys_info.get("protocol_version")
    order = ">" if big_endian else "<"

    objects = _read_storages(member("storages"), header, order, big_endian, info)
    _read_tensors(member("tensors"), header, order, objects)

    def persistent_load(pid):
        if type(pid) is tuple and pid and isinstance(pid[0], ClassRef):
            cls = pid[0]
            if len(pid) == 3 and isinstance(pid[1], str):
                cls.source_file, cls.source = pid[1], pid[2]
                info.module_sources[cls.path] = pid[1]
            return cls
        if isinstance(pid, str) and pid.isdigit() and int(pid) in objects:
            return objects[int(pid)]
        raise CheckpointError(f"{name}: persistent id {pid!r:.60} names no stored tensor or storage")

    policy = CheckpointPolicy(persistent_load=persistent_load, nested_loader=nested_loader)
    main = RestrictedUnpickler(member("pickle"), policy)
    obj = main.load()
    collect_facts(info, policy, main)
    return obj, info


def _count(region, header, what):
    n = RestrictedUnpickler(region, header).load()
    if type(n) is not int or n < 0:
        raise CheckpointError(f"{region.name}: malformed {what} count {n!r:.40}")
    return n


def _read_storages(region: Region, header, order: str, big_endian: bool, info: CheckpointInfo) -> dict:
    objects = {}
    policy = CheckpointPolicy()  # entries name storage classes
    for _ in range(_count(region, header, "storage")):
        entry = RestrictedUnpickler(region, policy).load()
        if type(entry) is not tuple or len(entry) != 3:
            raise CheckpointError(f"{region.name}: malformed storage entry {entry!r:.80}")
        key, location, storage_type = entry
        if type(key) is not int or not isinstance(storage_type, StorageType) or isinstance(storage_type, TensorType):
            raise CheckpointError(f"{region.name}: malformed storage entry {entry!r:.80}")
        (numel,) = struct.unpack(order + "q", region.read(8))
        ref = StorageRef(key, storage_type.dtype, check_count(numel, f"storage {key}"), str(location))
        allocate(ref, region.remaining)
        read_into(region, ref, big_endian)
        objects[key] = ref
        info.storages.append(ref)
    views = RestrictedUnpickler(region, header).load()
    if type(views) is not list:
        raise CheckpointError(f"{region.name}: malformed storage view list")
    for view in views:
        if type(view) not in (tuple, list) or len(view) != 4 or not all(type(v) is int for v in view):
            raise CheckpointError(f"{region.name}: malformed storage view {view!r:.80}")
        key, root_key, offset, numel = view
        root = objects.get(root_key)
        if root is None or root.root is not None or offset < 0 or numel < 0 or offset + numel > root.numel:
            raise CheckpointError(f"{region.name}: storage view {key} does not fit its root {root_key}")
        objects[key] = StorageRef(key, root.dtype, numel, root.location, root=root, offset=offset)
    return objects


def _read_tensors(region: Region, header, order: str, objects: dict) -> None:
    policy = CheckpointPolicy()
    for _ in range(_count(region, header, "tensor")):
        entry = RestrictedUnpickler(region, policy).load()
        if type(entry) is not tuple or len(entry) != 3 or type(entry[0]) is not int:
            raise CheckpointError(f"{region.name}: malformed tensor entry {entry!r:.80}")
        key, storage_key, tensor_type = entry
        storage = objects.get(storage_key)
        if not isinstance(storage, StorageRef):
            raise CheckpointError(f"{region.name}: tensor {key} uses unknown storage {storage_key!r:.40}")
        if isinstance(tensor_type, TensorType) and tensor_type.dtype != storage.dtype:
            raise CheckpointError(f"{region.name}: tensor {key} is {tensor_type.path} on a {storage.dtype} storage")
        (ndim,) = struct.unpack(order + "i", region.read(4))
        region.read(4)  # unused: the writer reserved 8 bytes for ndim
        if not 0 <= ndim <= MAX_DIMS:
            raise CheckpointError(f"{region.name}: tensor {key} claims {ndim} dimensions")
        sizes = struct.unpack(f"{order}{ndim}q", region.read(8 * ndim))
        strides = struct.unpack(f"{order}{ndim}q", region.read(8 * ndim))
        (offset,) = struct.unpack(order + "q", region.read(8))
        if key in objects:
            raise CheckpointError(f"{region.name}: tensor key {key} is already used")
        objects[key] = build_tensor(storage, offset, sizes, strides)
