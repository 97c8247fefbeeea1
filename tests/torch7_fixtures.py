"""A writer of Lua Torch7 files (``File:writeObject``), for tests.

Written from the format's description (see ``tracecap.checkpoint.torch7``), independently of
the reader: Python values go in, the bytes Torch7's ``torch.save`` would write come out, in
either byte order, either long size, binary or ascii, referenced (shared objects written once)
or not.

Values: None, bool, int/float (Lua numbers), str/bytes, dict (table), list (table with keys
1..n), ``Obj`` (a torch class instance with a table of fields), torch tensors (a view over
their storage; views of one storage share it), ``Storage``, ``CudaTensor``, ``Function``.
"""
import math
import struct

import torch

TYPE = {"nil": 0, "number": 1, "string": 2, "table": 3, "torch": 4, "boolean": 5, "function": 6,
        "shared_function": 8}
NAMES = {torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short", torch.int32: "Int",
         torch.int64: "Long", torch.float32: "Float", torch.float64: "Double", torch.float16: "Half"}
NUMPY = {torch.uint8: "u1", torch.int8: "i1", torch.int16: "i2", torch.int32: "i4", torch.int64: "i8",
         torch.float32: "f4", torch.float64: "f8", torch.float16: "f2"}


class Obj:
    """A torch class instance (nn.Linear, cudnn.ReLU ...) with its fields."""

    def __init__(self, typename, fields=None, version=1):
        self.typename = typename
        self.fields = dict(fields or {})
        self.version = version


class Storage:
    """A bare storage of a dtype; tensors built with ``view`` share it."""

    def __init__(self, values, dtype=None, cuda=False):
        self.values = torch.as_tensor(values, dtype=dtype).reshape(-1).contiguous()
        self.cuda = cuda

    def view(self, size, stride=None, offset=0):
        return TensorView(self, size, stride, offset)


class TensorView:
    """A tensor with explicit size/stride/offset (0-based) over a ``Storage``."""

    def __init__(self, storage, size, stride=None, offset=0):
        self.storage = storage
        self.size = list(size)
        if stride is None:
            stride, step = [], 1
            for n in reversed(self.size):
                stride.insert(0, step)
                step *= n
        self.stride = list(stride)
        self.offset = offset


class CudaTensor:
    """A tensor saved from the GPU (torch.Cuda*Tensor; torch.CudaTensor for float)."""

    def __init__(self, tensor):
        self.tensor = tensor


class Function:
    """A Lua function: bytecode bytes (never run by the reader) and upvalues {name=, value=}."""

    def __init__(self, bytecode=b"\x1bLJ\x01fake bytecode", upvalues=()):
        self.bytecode = bytecode
        self.upvalues = list(upvalues)


def class_name(dtype, kind, cuda=False):
    name = NAMES[dtype]
    if cuda:
        return "torch.Cuda" + ("" if name == "Float" else name) + kind
    return f"torch.{name}{kind}"


class Writer:
    def __init__(self, byteorder="little", encoding="binary", long_size=8, referenced=True,
                 versioned=True):
        self.mark = "<" if byteorder == "little" else ">"
        self.ascii = encoding == "ascii"
        self.long_size = long_size
        self.referenced = referenced
        self.versioned = versioned
        self.out = bytearray()
        self.index = {}
        self.count = 0
        self.storages = {}

    # -- primitives ---------------------------------------------------------------------------
    def ints(self, *values, fmt="i"):
        if self.ascii:
            self.out += " ".join(str(int(v)) for v in values).encode() + b"\n"
        else:
            self.out += struct.pack(f"{self.mark}{len(values)}{fmt}", *values)

    def longs(self, *values):
        if not values:
            return
        self.ints(*values, fmt="q" if self.long_size == 8 else "i")

    def double(self, value):
        if self.ascii:
            self.out += _g17(value).encode() + b"\n"
        else:
            self.out += struct.pack(self.mark + "d", value)

    def chars(self, raw):
        self.ints(len(raw))
        self.out += raw
        if self.ascii:
            self.out += b"\n"

    def elements(self, values: torch.Tensor):
        dtype = values.dtype
        if self.ascii:
            if dtype in (torch.uint8, torch.int8):
                self.out += values.numpy().tobytes() + b"\n"
            elif values.numel():
                if dtype.is_floating_point:
                    text = " ".join(_g17(float(v)) if dtype == torch.float64 else f"{float(v):.9g}"
                                    for v in values.tolist())
                else:
                    text = " ".join(str(v) for v in values.tolist())
                self.out += text.encode() + b"\n"
            return
        if dtype == torch.int64 and self.long_size == 4:
            self.out += values.numpy().astype(self.mark + "i4").tobytes()
        else:
            self.out += values.numpy().astype(self.mark + NUMPY[dtype]).tobytes()

    # -- objects ------------------------------------------------------------------------------
    def _shared(self, key):
        """Write the index; True if the object was written before (only the index is needed)."""
        if self.referenced and key in self.index:
            self.ints(self.index[key])
            return True
        self.count += 1
        if self.referenced:
            self.index[key] = self.count
        self.ints(self.count)
        return False

    def _class(self, typename, version):
        if self.versioned:
            self.chars(f"V {version}".encode())
        self.chars(typename.encode())

    def obj(self, value):
        if value is None:
            self.ints(TYPE["nil"])
        elif isinstance(value, bool):
            self.ints(TYPE["boolean"])
            self.ints(1 if value else 0)
        elif isinstance(value, (int, float)):
            self.ints(TYPE["number"])
            self.double(float(value))
        elif isinstance(value, (str, bytes)):
            self.ints(TYPE["string"])
            self.chars(value.encode() if isinstance(value, str) else value)
        elif isinstance(value, (dict, list)):
            self.ints(TYPE["table"])
            if self._shared(id(value)):
                return
            items = value.items() if isinstance(value, dict) else enumerate(value, 1)
            items = list(items)
            self.ints(len(items))
            for k, v in items:
                self.obj(k)
                self.obj(v)
        elif isinstance(value, Obj):
            self.ints(TYPE["torch"])
            if self._shared(id(value)):
                return
            self._class(value.typename, value.version)
            self.obj(value.fields)
        elif isinstance(value, Function):
            self.ints(TYPE["shared_function"])
            if self._shared(id(value)):
                return
            self.chars(value.bytecode)
            self.obj([{"name": n, "value": v} for n, v in value.upvalues])
        elif isinstance(value, Storage):
            self.storage(value)
        elif isinstance(value, (torch.Tensor, TensorView, CudaTensor)):
            self.tensor(value)
        else:
            raise TypeError(f"cannot write {type(value).__name__}")

    def storage(self, st: Storage):
        self.ints(TYPE["torch"])
        if self._shared(id(st)):
            return
        self._class(class_name(st.values.dtype, "Storage", st.cuda), 1)
        self.longs(st.values.numel())
        self.elements(st.values)

    def tensor(self, value):
        cuda = isinstance(value, CudaTensor)
        if cuda:
            value = value.tensor
        self.ints(TYPE["torch"])
        if self._shared(id(value)):
            return
        if isinstance(value, TensorView):
            view = value
            dtype = view.storage.values.dtype
            cuda = cuda or view.storage.cuda
        else:
            dtype = value.dtype
            view = None
            if value.numel():
                key = (value.untyped_storage().data_ptr(), value.dtype, cuda)
                if key not in self.storages:
                    base = torch.empty(0, dtype=value.dtype).set_(value.untyped_storage())
                    self.storages[key] = Storage(base.clone(), cuda=cuda)
                size, stride = (list(value.shape), list(value.stride())) if value.dim() else ([1], [1])
                view = TensorView(self.storages[key], size, stride, value.storage_offset())
        self._class(class_name(dtype, "Tensor", cuda), 1)
        if view is None:  # Torch7's empty tensor: no dimensions, no storage
            self.ints(0)
            self.longs(1)
            self.ints(TYPE["nil"])
            return
        self.ints(len(view.size))
        self.longs(*view.size)
        self.longs(*view.stride)
        self.longs(view.offset + 1)
        self.obj(view.storage)


def _g17(value):
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.17g}"


def t7_bytes(value, **options):
    """The bytes of ``torch.save(file, value)`` in Lua, with ``Writer`` options."""
    w = Writer(**options)
    w.obj(value)
    return bytes(w.out)


def module(typename, **fields):
    """An nn/cudnn module as Torch7 saves it, with the usual empty output/gradInput buffers."""
    base = {"output": torch.zeros(0, dtype=torch.float32), "gradInput": torch.zeros(0, dtype=torch.float32),
            "train": False, "_type": "torch.FloatTensor"}
    base.update(fields)
    return Obj(typename, base)
