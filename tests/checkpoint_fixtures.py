"""Write checkpoints in the tar, legacy and zip layouts from scratch (struct + pickle).

Modern torch still writes zip (``torch.save``) and legacy (``_use_new_zipfile_serialization=False``)
but not tar, and never big-endian or 0.3-style files; these writers produce all of them, byte for
byte as described in tracecap/checkpoint/{tar,legacy,zip}_format.py, so readers can be tested on
every format x dtype x byte order x view layout.

Objects may nest dicts, OrderedDicts, lists, tuples, numbers, strings and tensors (including
nn.Parameter and per-tensor / per-channel quantized tensors).  Tensors sharing memory share one
storage in the file.  Module-level helpers only; no tracecap imports (the tests compare against
an independent writer).
"""
from __future__ import annotations

import copyreg
import io
import pickle
import struct
import tarfile
import zipfile
from collections import OrderedDict

import numpy as np
import torch

MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {
    torch.float64: "DoubleStorage", torch.float32: "FloatStorage", torch.float16: "HalfStorage",
    torch.bfloat16: "BFloat16Storage", torch.int64: "LongStorage", torch.int32: "IntStorage",
    torch.int16: "ShortStorage", torch.int8: "CharStorage", torch.uint8: "ByteStorage",
    torch.bool: "BoolStorage", torch.complex64: "ComplexFloatStorage", torch.complex128: "ComplexDoubleStorage",
    torch.qint8: "QInt8Storage", torch.quint8: "QUInt8Storage", torch.qint32: "QInt32Storage",
}


def storage_class(dtype):
    return getattr(torch, STORAGE_NAMES[dtype])


def tensor_class(dtype):
    return getattr(torch, STORAGE_NAMES[dtype].replace("Storage", "Tensor"))


def raw_bytes(t: torch.Tensor, big_endian: bool) -> bytes:
    """All bytes of ``t``'s storage, optionally byte-swapped per element (complex: per half)."""
    st = t.untyped_storage()
    # the storage's bytes through a uint8 view (bytes(st) walks it element by element: minutes
    # for a 100 MB model)
    whole = torch.empty(0, dtype=torch.uint8).set_(st, 0, (st.nbytes(),))
    data = whole.numpy().copy() if st.nbytes() else np.zeros(0, np.uint8)
    size = t.element_size()
    unit = size // 2 if t.is_complex() else size
    if big_endian and unit > 1:
        data = data.view({2: ">u2", 4: ">u4", 8: ">u8"}[unit]).astype({2: "<u2", 4: "<u4", 8: "<u8"}[unit])
        data = data.view(np.uint8)
    return data.tobytes()


class _Storage:
    """One storage in the file: its key, element type, element count and bytes."""

    def __init__(self, key, tensor, big_endian):
        self.key = key
        self.dtype = tensor.dtype
        self.numel = tensor.untyped_storage().nbytes() // tensor.element_size()
        self.claim = self.numel  # the element count the file states (tests forge it)
        self.data = raw_bytes(tensor, big_endian)


class RawTensor:
    """Pickles as a tensor rebuild on ``tensor``'s storage with any (possibly absurd) view."""

    def __init__(self, tensor, offset, size, stride):
        self.tensor, self.offset, self.size, self.stride = tensor, offset, size, stride


class _Collector:
    """Assigns keys to storages in order of first use; tensors sharing memory share a key."""

    def __init__(self, big_endian, claim=None):
        self.big_endian = big_endian
        self.claim = claim
        self.by_ptr = {}
        self.order = []

    def storage(self, t: torch.Tensor) -> _Storage:
        ptr = t.untyped_storage().data_ptr()
        st = self.by_ptr.get(ptr) if t.untyped_storage().nbytes() else None
        if st is None:
            st = _Storage(str(len(self.order)), t, self.big_endian)
            if self.claim is not None:
                st.claim = self.claim
            if t.untyped_storage().nbytes():
                self.by_ptr[ptr] = st
            self.order.append(st)
        return st


class _View:
    """A legacy storage view: ``numel`` elements of ``root`` starting at ``offset``."""

    def __init__(self, root, key, offset, numel):
        self.root, self.key, self.offset, self.numel = root, key, offset, numel


class _TensorPickler(pickle.Pickler):
    """Pickles tensors the way torch's serializers did, with storages as persistent ids."""

    def __init__(self, file, collector, pid_style, rebuild="v2", views=False, location="cpu", protocol=2):
        super().__init__(file, protocol=protocol)
        self.collector = collector
        self.pid_style = pid_style  # "legacy" | "zip"
        self.rebuild = rebuild
        self.views = views
        self.location = location
        self.view_count = 0

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            cls = storage_class(obj.dtype)
            if self.pid_style == "zip":
                return ("storage", cls, obj.key, self.location, obj.claim)
            return ("storage", cls, obj.key, self.location, obj.claim, None)
        if isinstance(obj, _View):
            return ("storage", storage_class(obj.root.dtype), obj.root.key, self.location, obj.root.numel,
                    (obj.key, obj.offset, obj.numel))
        return None

    def reducer_override(self, obj):
        if isinstance(obj, RawTensor):
            st = self.collector.storage(obj.tensor)
            return torch._utils._rebuild_tensor_v2, (st, obj.offset, obj.size, obj.stride, False, OrderedDict())
        if not isinstance(obj, torch.Tensor):
            return NotImplemented
        if isinstance(obj, torch.nn.Parameter):
            return torch._utils._rebuild_parameter, (obj.detach(), obj.requires_grad, OrderedDict())
        st = self.collector.storage(obj)
        offset = obj.storage_offset()
        if self.views and offset and obj.is_contiguous() and not obj.is_quantized:
            self.view_count += 1
            st = _View(st, f"view{self.view_count}", offset, obj.numel())
            offset = 0
        size, stride = tuple(obj.shape), tuple(obj.stride())
        if obj.is_quantized:
            if obj.qscheme() == torch.per_tensor_affine:
                q = (torch.per_tensor_affine, obj.q_scale(), obj.q_zero_point())
            else:
                q = (torch.per_channel_affine, obj.q_per_channel_scales(), obj.q_per_channel_zero_points(),
                     obj.q_per_channel_axis())
            return torch._utils._rebuild_qtensor, (st, offset, size, stride, q, False, OrderedDict())
        if self.rebuild == "v1":
            return torch._utils._rebuild_tensor, (st, offset, size, stride)
        return torch._utils._rebuild_tensor_v2, (st, offset, size, stride, obj.requires_grad, OrderedDict())


def _sys_info(little_endian, protocol_version):
    return {"protocol_version": protocol_version, "little_endian": little_endian,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}


def legacy_bytes(obj, *, big_endian=False, rebuild="v2", views=False, location="cpu", protocol=2,
                 reverse_data=False, claim=None) -> bytes:
    """The legacy format: magic, 1001, sys_info, object pickle, key list, counted raw storages.

    ``claim`` forges the element count stated for every storage (pickle and data header).
    """
    out = io.BytesIO()
    for header in (MAGIC, 1001, _sys_info(not big_endian, 1001)):
        pickle.dump(header, out, protocol=2)
    collector = _Collector(big_endian, claim)
    _TensorPickler(out, collector, "legacy", rebuild, views, location, protocol).dump(obj)
    storages = collector.order[::-1] if reverse_data else collector.order
    pickle.dump([s.key for s in storages], out, protocol=2)
    count = ">q" if big_endian else "<q"
    for st in storages:
        out.write(struct.pack(count, st.claim))
        out.write(st.data)
    return out.getvalue()


def zip_bytes(obj, *, big_endian=False, prefix="archive", byteorder_record=True, location="cpu",
              claim=None) -> bytes:
    """The zip format: <prefix>/data.pkl, data/<key> (stored), version, byteorder."""
    pkl = io.BytesIO()
    collector = _Collector(big_endian, claim)
    _TensorPickler(pkl, collector, "zip", location=location).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pkl.getvalue())
        if byteorder_record:
            zf.writestr(f"{prefix}/byteorder", "big" if big_endian else "little")
        for st in collector.order:
            zf.writestr(f"{prefix}/data/{st.key}", st.data)
        zf.writestr(f"{prefix}/version", "3\n")
    return out.getvalue()


class _TarPickler(pickle.Pickler):
    """tar format main pickle: a tensor is the persistent id "<key>" of an entry in 'tensors'."""

    def __init__(self, file, tensors):
        super().__init__(file, protocol=2)
        self.tensors = tensors

    def persistent_id(self, obj):
        if isinstance(obj, torch.Tensor) and not isinstance(obj, torch.nn.Parameter):
            for key, t in self.tensors:
                if t is obj:
                    return str(key)
            key = 1000 + len(self.tensors)
            self.tensors.append((key, obj))
            return str(key)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, torch.nn.Parameter):  # 0.1.x: Parameter() + BUILD (data, grad, hooks, rg, volatile)
            return copyreg.__newobj__, (torch.nn.Parameter,), (obj.detach(), None, None, obj.requires_grad, False)
        return NotImplemented


def tar_bytes(obj, *, big_endian=False, views=False, claim=None) -> bytes:
    """The tar format: members sys_info, pickle, tensors, storages."""
    order = ">" if big_endian else "<"
    main = io.BytesIO()
    tensors = []
    _TarPickler(main, tensors).dump(obj)

    collector = _Collector(big_endian, claim)
    storages = io.BytesIO()
    tens = io.BytesIO()
    view_list = []
    entries = []
    for key, t in tensors:
        st = collector.storage(t)
        offset = t.storage_offset()
        storage_key = 10 + int(st.key)
        if views and offset and t.is_contiguous():
            view_key = 500 + len(view_list)
            view_list.append((view_key, storage_key, offset, t.numel()))
            storage_key, offset = view_key, 0
        entries.append((key, storage_key, t, offset))
    pickle.dump(len(collector.order), storages, protocol=2)
    for st in collector.order:
        pickle.dump((10 + int(st.key), "cpu", storage_class(st.dtype)), storages, protocol=2)
        storages.write(struct.pack(order + "q", st.claim))
        storages.write(st.data)
    pickle.dump(view_list, storages, protocol=2)
    pickle.dump(len(entries), tens, protocol=2)
    for key, storage_key, t, offset in entries:
        pickle.dump((key, storage_key, tensor_class(t.dtype)), tens, protocol=2)
        tens.write(struct.pack(order + "i", t.dim()) + b"\0\0\0\0")
        tens.write(struct.pack(f"{order}{t.dim()}q", *t.shape))
        tens.write(struct.pack(f"{order}{t.dim()}q", *t.stride()))
        tens.write(struct.pack(order + "q", offset))

    members = [("sys_info", pickle.dumps(_sys_info(not big_endian, 1000), protocol=2)),
               ("pickle", main.getvalue()), ("tensors", tens.getvalue()), ("storages", storages.getvalue())]
    return tar_of(members)


def tar_of(members, kinds=None) -> bytes:
    """A tar archive of (name, bytes) members; ``kinds`` maps a name to a tarfile member type."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if kinds and name in kinds:
                info.type = kinds[name]
                info.linkname = "/etc/passwd"
                info.size = 0
                data = b""
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def legacy_from_parts(main: bytes, keys=(), data=b"", magic=MAGIC, version=1001, sys_info=None) -> bytes:
    """A legacy file around a hand-made object pickle (for hostile-input tests)."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in (magic, version, sys_info or _sys_info(True, 1001)))
    return head + main + pickle.dumps(list(keys), protocol=2) + data


def zip_from_records(records: dict, compression=zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for name, data in records.items():
            zf.writestr(name, data)
    return out.getvalue()


def tar_from_pickle(main: bytes) -> bytes:
    """A tar checkpoint with no tensors whose object pickle is ``main``."""
    empty_count = pickle.dumps(0, protocol=2)
    return tar_of([("sys_info", pickle.dumps(_sys_info(True, 1000), protocol=2)), ("pickle", main),
                   ("tensors", empty_count), ("storages", empty_count + pickle.dumps([], protocol=2))])


def torch_zip_bytes(obj, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def torch_legacy_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


WRITERS = {
    "tar": tar_bytes,
    "legacy": legacy_bytes,
    "legacy_v1": lambda obj, **kw: legacy_bytes(obj, rebuild="v1", **kw),
    "legacy_p4": lambda obj, **kw: legacy_bytes(obj, protocol=4, **kw),
    "zip": zip_bytes,
}


def sample_tensor(dtype, shape=(2, 3), seed=0) -> torch.Tensor:
    """Deterministic values that exercise sign, fraction and (for complex) both halves."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype in (torch.qint8, torch.quint8, torch.qint32):
        return torch.quantize_per_tensor(torch.randn(shape, generator=g), 0.05, 3, dtype)
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, generator=g)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -(2 ** 31)), min(info.max, 2 ** 31 - 1), shape, generator=g,
                         dtype=torch.int64).to(dtype)
