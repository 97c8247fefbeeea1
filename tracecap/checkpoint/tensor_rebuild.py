"""Allow-list entries for torch: dtypes, storage classes and our own tensor rebuilders.

PyTorch pickles a tensor as a call to ``torch._utils._rebuild_tensor*`` with a storage and a
view description.  We never call torch's functions with file data; each entry below checks its
arguments and builds the tensor from the ``StorageRef`` with ``storages.build_tensor``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from tracecap.errors import CheckpointError

from .allowlist import Marker, SafeCall, allow, allow_value, arity
from .placeholders import ClassRef, Pending, resolve
from .storages import QUANTIZED, STORAGE_DTYPES, TENSOR_DTYPES, TORCH_DTYPES, StorageRef, build_tensor


class StorageType(Marker):
    """``torch.FloatStorage`` and friends: only their dtype matters."""

    __slots__ = ()

    @property
    def dtype(self):
        return self.value


class TensorType(StorageType):
    """``torch.FloatTensor`` and friends (tar format)."""

    __slots__ = ()


for _name, _dtype in STORAGE_DTYPES.items():
    for _mod in ("torch", "torch.cuda"):
        allow_value(f"{_mod}.{_name}", StorageType(f"torch.{_name}", _dtype))
for _path in ("torch.UntypedStorage", "torch.storage.UntypedStorage", "torch.cuda.UntypedStorage"):
    allow_value(_path, StorageType(_path, torch.uint8))
for _name, _dtype in TENSOR_DTYPES.items():
    for _mod in ("torch", "torch.cuda"):
        allow_value(f"{_mod}.{_name}", TensorType(f"torch.{_name}", _dtype))
for _name, _dtype in TORCH_DTYPES.items():
    allow_value(f"torch.{_name}", _dtype)
for _name in ("contiguous_format", "channels_last", "channels_last_3d", "preserve_format"):
    allow_value(f"torch.{_name}", getattr(torch, _name))
QSCHEMES = {n: getattr(torch, n) for n in ("per_tensor_affine", "per_channel_affine", "per_tensor_symmetric",
                                          "per_channel_symmetric", "per_channel_affine_float_qparams")}
for _name, _value in QSCHEMES.items():
    allow_value(f"torch.{_name}", _value)
LAYOUTS = {n: getattr(torch, n) for n in ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr",
                                         "sparse_bsc")}
for _name, _value in LAYOUTS.items():
    allow_value(f"torch.{_name}", _value)
TENSOR_CLASS = Marker("torch.Tensor", torch.Tensor)
for _path in ("torch.Tensor", "torch._tensor.Tensor"):
    allow_value(_path, TENSOR_CLASS)


def _storage(value, path) -> StorageRef:
    if not isinstance(value, StorageRef):
        raise CheckpointError(f"{path}: expected a storage, got {type(value).__name__}")
    return value


def _tensor(value, what) -> torch.Tensor:
    value = resolve(value)
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{what}: expected a tensor, got {type(value).__name__}")
    return value


def _grad(t: torch.Tensor, requires_grad) -> torch.Tensor:
    if requires_grad is True and (t.is_floating_point() or t.is_complex()):
        t.requires_grad_(True)
    return t


def _dtype(value, path):
    if not isinstance(value, torch.dtype):
        raise CheckpointError(f"{path}: expected a dtype, got {value!r:.60}")
    return value


@allow("torch._utils._rebuild_tensor")
def rebuild_tensor_v1(policy, args, kwargs, new):
    storage, offset, size, stride = arity(args, 4, 4, "_rebuild_tensor")
    return build_tensor(_storage(storage, "_rebuild_tensor"), offset, size, stride)


@allow("torch._utils._rebuild_tensor_v2")
def rebuild_tensor_v2(policy, args, kwargs, new):
    storage, offset, size, stride, requires_grad, hooks, metadata = arity(args, 4, 7, "_rebuild_tensor_v2")
    t = build_tensor(_storage(storage, "_rebuild_tensor_v2"), offset, size, stride)
    return _grad(t, requires_grad)


@allow("torch._utils._rebuild_tensor_v3")
def rebuild_tensor_v3(policy, args, kwargs, new):
    storage, offset, size, stride, requires_grad, hooks, dtype, metadata = arity(args, 7, 8, "_rebuild_tensor_v3")
    t = build_tensor(_storage(storage, "_rebuild_tensor_v3"), offset, size, stride,
                     dtype=_dtype(dtype, "_rebuild_tensor_v3"))
    return _grad(t, requires_grad)


@allow("torch._utils._rebuild_qtensor")
def rebuild_qtensor(policy, args, kwargs, new):
    storage, offset, size, stride, qparams, requires_grad, hooks = arity(args, 7, 7, "_rebuild_qtensor")
    storage = _storage(storage, "_rebuild_qtensor")
    if storage.dtype not in QUANTIZED:
        raise CheckpointError(f"_rebuild_qtensor on a non-quantized {storage.dtype} storage")
    if type(qparams) is not tuple or not qparams:
        raise CheckpointError("_rebuild_qtensor: malformed quantizer parameters")
    scheme = qparams[0]
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric) and len(qparams) == 3:
        scale, zero_point = qparams[1], qparams[2]
        if type(scale) not in (float, int) or type(zero_point) is not int:
            raise CheckpointError("_rebuild_qtensor: scale must be a number and zero_point an int")

        def quantizer(shape):
            return torch._empty_affine_quantized(shape, scale=float(scale), zero_point=zero_point,
                                                 dtype=storage.dtype)
    elif scheme in (torch.per_channel_affine, torch.per_channel_affine_float_qparams,
                    torch.per_channel_symmetric) and len(qparams) == 4:
        scales = _tensor(qparams[1], "per-channel scales").detach()
        zero_points = _tensor(qparams[2], "per-channel zero points").detach()
        axis = qparams[3]
        if type(size) not in (tuple, list, torch.Size) or type(axis) is not int or not 0 <= axis < len(size):
            raise CheckpointError(f"_rebuild_qtensor: axis {axis!r} out of range for shape {size!r:.60}")
        if scales.dim() != 1 or zero_points.dim() != 1 or not scales.numel() == zero_points.numel() == size[axis]:
            raise CheckpointError("_rebuild_qtensor: per-channel parameters do not match the channel count")
        scales = scales.to(torch.float64)
        if scheme is not torch.per_channel_affine_float_qparams:
            zero_points = zero_points.to(torch.int64)

        def quantizer(shape):
            return torch._empty_per_channel_affine_quantized(shape, scales=scales, zero_points=zero_points,
                                                             axis=axis, dtype=storage.dtype)
    else:
        raise CheckpointError(f"_rebuild_qtensor: unsupported quantization scheme {scheme!r}")
    with warnings.catch_warnings():   # torch deprecates creating quantized tensors; reading them is the point
        warnings.simplefilter("ignore")
        return build_tensor(storage, offset, size, stride, quantizer=quantizer)


def _parameter(data, requires_grad):
    data = _tensor(data, "Parameter")
    can_grad = data.is_floating_point() or data.is_complex()
    return torch.nn.Parameter(data.detach(), requires_grad=bool(requires_grad is not False and can_grad))


@allow("torch._utils._rebuild_parameter")
def rebuild_parameter(policy, args, kwargs, new):
    data, requires_grad, hooks = arity(args, 3, 3, "_rebuild_parameter")
    return _parameter(data, requires_grad)


def _set_attributes(obj, state):
    if isinstance(state, tuple) and len(state) == 2:
        state = state[0]
    if isinstance(state, dict):
        obj.__dict__.update({k: v for k, v in state.items() if isinstance(k, str)})


@allow("torch._utils._rebuild_parameter_with_state")
def rebuild_parameter_with_state(policy, args, kwargs, new):
    data, requires_grad, hooks, state = arity(args, 4, 4, "_rebuild_parameter_with_state")
    p = _parameter(data, requires_grad)
    _set_attributes(p, state)
    return p


@allow("torch.nn.parameter.Parameter")
def parameter_class(policy, args, kwargs, new):
    """0.2: ``Parameter(data)`` then BUILD; 0.1 (tar): ``Parameter()`` then BUILD with the data."""
    if not args:
        return Pending("Parameter", lambda state, has: _variable_state(state, has, True))
    data, requires_grad = arity(args, 1, 2, "Parameter")
    return _parameter(data, True if requires_grad is None else requires_grad)


@allow("torch.autograd.variable.Variable", "torch.autograd.Variable")
def variable_class(policy, args, kwargs, new):
    if not args:
        return Pending("Variable", lambda state, has: _variable_state(state, has, False))
    data, requires_grad = arity(args, 1, 2, "Variable")
    return _grad(_tensor(data, "Variable").detach(), requires_grad)


def _variable_state(state, has_state, parameter):
    """0.1.x Variable state: (data, grad, backward_hooks, requires_grad, volatile)."""
    if type(state) is not tuple or len(state) != 5:
        raise CheckpointError("old Variable/Parameter state must be a 5-tuple (data, grad, hooks, requires_grad, volatile)")
    data, requires_grad = state[0], state[3]
    if parameter:
        return _parameter(data, requires_grad)
    return _grad(_tensor(data, "Variable").detach(), requires_grad)


def set_tensor_state(t: torch.Tensor, state):
    """BUILD on a tensor: 0.2 Parameters carry (requires_grad, volatile, hooks); newer ones a dict."""
    if type(state) is tuple and len(state) == 3 and type(state[0]) is bool:
        if t.is_leaf and (t.is_floating_point() or t.is_complex()):
            t.requires_grad_(state[0])
        return
    if isinstance(state, dict) or (type(state) is tuple and len(state) == 2):
        _set_attributes(t, state)
        return
    raise CheckpointError(f"unexpected tensor state of type {type(state).__name__}")


@allow("torch._tensor._rebuild_from_type_v2")
def rebuild_from_type_v2(policy, args, kwargs, new):
    func, new_type, fargs, state = arity(args, 4, 4, "_rebuild_from_type_v2")
    if not isinstance(func, SafeCall) or func.fn not in _TENSOR_BUILDERS:
        raise CheckpointError(f"_rebuild_from_type_v2 with a non-tensor rebuilder {func!r}")
    if type(fargs) is not tuple:
        raise CheckpointError("_rebuild_from_type_v2 arguments must be a tuple")
    t = _tensor(func.fn(policy, fargs, {}, False), "_rebuild_from_type_v2")
    if new_type is parameter_class:
        t = _parameter(t, t.requires_grad)
    elif isinstance(new_type, ClassRef):
        policy.note(f"tensor subclass {new_type.path} read as a plain tensor")
    elif new_type is not TENSOR_CLASS:
        raise CheckpointError(f"_rebuild_from_type_v2 with unsupported type {new_type!r}")
    if state:
        set_tensor_state(t, state)
    return t


@allow("torch._utils._rebuild_sparse_tensor")
def rebuild_sparse(policy, args, kwargs, new):
    layout, data = arity(args, 2, 2, "_rebuild_sparse_tensor")
    if type(data) is not tuple:
        raise CheckpointError("_rebuild_sparse_tensor data must be a tuple")
    if layout is torch.sparse_coo and len(data) in (3, 4):
        indices, values, size = (_tensor(data[0], "indices"), _tensor(data[1], "values"), data[2])
        t = torch.sparse_coo_tensor(indices, values, _shape(size), check_invariants=True)
        if len(data) == 4 and data[3] is True:
            t = t.coalesce()
        return t
    if layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc) and len(data) == 4:
        a, b, v = (_tensor(x, "sparse component") for x in data[:3])
        return torch.sparse_compressed_tensor(a, b, v, _shape(data[3]), layout=layout, check_invariants=True)
    raise CheckpointError(f"unsupported sparse tensor layout {layout!r}")


@allow("torch.serialization._get_layout")
def get_layout(policy, args, kwargs, new):
    (name,) = arity(args, 1, 1, "_get_layout")
    layout = LAYOUTS.get(name.replace("torch.", "")) if type(name) is str else None
    if layout is None:
        raise CheckpointError(f"unknown tensor layout {name!r:.60}")
    return layout


@allow("torch._utils._rebuild_meta_tensor_no_storage")
def rebuild_meta(policy, args, kwargs, new):
    dtype, size, stride, requires_grad = arity(args, 4, 4, "_rebuild_meta_tensor_no_storage")
    return torch.empty_strided(_shape(size), _shape(stride), dtype=_dtype(dtype, "meta tensor"), device="meta")


@allow("torch._utils._rebuild_device_tensor_from_numpy")
def rebuild_from_numpy(policy, args, kwargs, new):
    data, dtype, device, requires_grad = arity(args, 4, 4, "_rebuild_device_tensor_from_numpy")
    if not isinstance(data, np.ndarray) or data.dtype == object:
        raise CheckpointError("_rebuild_device_tensor_from_numpy expects a numeric numpy array")
    return _grad(torch.from_numpy(np.array(data)).to(_dtype(dtype, "device tensor")), requires_grad)


@allow("torch._utils._rebuild_device_tensor_from_cpu_tensor")
def rebuild_from_cpu_tensor(policy, args, kwargs, new):
    data, dtype, device, requires_grad = arity(args, 4, 4, "_rebuild_device_tensor_from_cpu_tensor")
    return _grad(_tensor(data, "device tensor").detach().to(_dtype(dtype, "device tensor")), requires_grad)


def _shape(value):
    if type(value) not in (tuple, list, torch.Size) or not all(type(v) is int and v >= 0 for v in value):
        raise CheckpointError(f"expected a shape (tuple of non-negative ints), got {value!r:.80}")
    return torch.Size(value)


@allow("torch.Size")
def size_class(policy, args, kwargs, new):
    (value,) = arity(args, 0, 1, "torch.Size")
    return torch.Size() if value is None else _shape(value)


@allow("torch.device")
def device_class(policy, args, kwargs, new):
    kind, index = arity(args, 1, 2, "torch.device")
    if type(kind) is not str or len(kind) > 64 or (index is not None and type(index) is not int):
        raise CheckpointError("torch.device expects a short device string and an optional index")
    return torch.device(kind) if index is None else torch.device(kind, index)


@allow("torch.storage._load_from_bytes")
def load_from_bytes(policy, args, kwargs, new):
    """Plain ``pickle.dumps(tensor)`` embeds each storage as a small torch.save stream."""
    (data,) = arity(args, 1, 1, "_load_from_bytes")
    if type(data) not in (bytes, bytearray):
        raise CheckpointError("_load_from_bytes expects bytes")
    return policy.load_nested(bytes(data))


_TENSOR_BUILDERS = {f.fn for f in (rebuild_tensor_v1, rebuild_tensor_v2, rebuild_tensor_v3, rebuild_qtensor,
                                   rebuild_parameter, rebuild_parameter_with_state, rebuild_sparse, rebuild_meta,
                                   rebuild_from_numpy, rebuild_from_cpu_tensor)}
