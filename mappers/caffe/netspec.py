"""Build a Caffe ``NetParameter`` from plain layer descriptions.

Mappers describe a layer as data -- a :class:`Layer` with a Caffe type, a name,
bottoms, tops, the fields of its ``*_param`` message as a dict and its weights
as numpy arrays -- and :func:`to_net` turns a list of them into the generated
protobuf message of one dialect. Mappers never touch protobuf: this module
fills the messages, ``wire`` and ``writer`` encode and write them.

Nothing is dropped silently: an unknown layer type, an unknown field or a value
of the wrong type raises :class:`tracecap.MappingError` naming the layer, its
type and the field.
"""
from __future__ import annotations

import functools
import math
from types import MappingProxyType
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from google.protobuf.descriptor import FieldDescriptor

from tracecap.errors import MappingError
from tracecap.mappers.caffe.proto import DIALECTS, PARAM_FIELD_OVERRIDES, PARAMETERLESS, module_for
from tracecap.mappers.caffe.lazy_blob import ready, written_array
from tracecap.mappers.caffe.wire import array_blob_pieces, blob_array, is_repeated


@dataclass
class Layer:
    """One Caffe layer, as plain data.

    ``params`` holds the fields of the layer's ``*_param`` message: scalars,
    lists for repeated fields, dicts for sub-messages, enum values by name
    ("MAX") or number. ``blobs`` are the weights, written as float32 with their
    shape: arrays (a float32 C-order array is written from its own memory; it may
    be a read-only view of a tensor, so never change one in place) or
    ``lazy_blob.LazyBlob`` (made only while written). ``extra`` sets other
    LayerParameter fields (``include``, ``param``, ``propagate_down``,
    ``loss_weight``, another ``*_param``) the same way.
    """

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict = field(default_factory=dict)
    blobs: list = field(default_factory=list)  # np.ndarray | LazyBlob
    extra: dict = field(default_factory=dict)
    #: the graph node this layer was mapped from (set by ``caffe.to_layers``), for reports and errors
    origin: object = field(default=None, repr=False, compare=False)


# LayerParameter fields that Layer sets through its own attributes.
_STRUCTURAL = ("name", "type", "bottom", "top", "blobs")

_FD = FieldDescriptor
_INT_RANGES = {
    _FD.CPPTYPE_INT32: ("int32", -(2**31), 2**31 - 1),
    _FD.CPPTYPE_INT64: ("int64", -(2**63), 2**63 - 1),
    _FD.CPPTYPE_UINT32: ("uint32", 0, 2**32 - 1),
    _FD.CPPTYPE_UINT64: ("uint64", 0, 2**64 - 1),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class NetWithBlobs(NamedTuple):
    """A ``NetParameter`` whose layers carry no blobs, and the blobs beside it.

    ``blobs[i]`` is the list of weight arrays of ``net.layer[i]`` (empty for a
    layer without weights), each float32, little-endian, C order -- what
    :func:`blob_array` gives -- or a ``LazyBlob`` the writer makes while writing
    it. ``writer.save_parts(net, blobs, ...)`` writes the files the equivalent
    net with blobs would give. The arrays may be the caller's own (no copy when
    already float32 little-endian C order).
    """

    net: object
    blobs: list


@functools.lru_cache(maxsize=None)
def layer_types(dialect: str) -> Mapping[str, str | None]:
    """Every layer type ``dialect`` knows, mapped to its ``*_param`` field (or None).

    Derived from the descriptor: each ``*_param`` field of LayerParameter whose
    message is ``<Type>Parameter`` gives type ``<Type>`` (so ``norm_param`` of
    NormalizeParameter gives "Normalize"), then the override table and the
    parameterless types above.
    """
    desc = module_for(dialect).LayerParameter.DESCRIPTOR
    types: dict[str, str | None] = {}
    for fd in desc.fields:
        if fd.name.endswith("_param") and fd.message_type is not None:
            msg = fd.message_type.name
            if msg.endswith("Parameter"):
                types[msg[: -len("Parameter")]] = fd.name
    for type_, fname in PARAM_FIELD_OVERRIDES.items():
        if fname in desc.fields_by_name:
            types[type_] = fname
    for type_ in PARAMETERLESS[dialect]:
        types.setdefault(type_, None)
    return MappingProxyType(types)


def param_field(layer_type: str, dialect: str | None = None) -> str:
    """The LayerParameter field holding ``layer_type``'s parameters.

    "Convolution" and "Deconvolution" -> "convolution_param", "InnerProduct" ->
    "inner_product_param", "ReLU" -> "relu_param". Without ``dialect`` any
    dialect's types are accepted. Raises MappingError for an unknown type or a
    type without parameters.
    """
    for d in DIALECTS if dialect is None else (dialect,):
        types = layer_types(d)
        if layer_type in types:
            if types[layer_type] is None:
                raise MappingError(f"Caffe layer type {layer_type!r} takes no parameters")
            return types[layer_type]
    where = "any dialect" if dialect is None else f"the {dialect} dialect"
    raise MappingError(f"unknown Caffe layer type {layer_type!r} in {where}")


def to_net(layers, *, name: str, inputs: Mapping[str, tuple[int, ...]], dialect: str,
           with_blobs: bool = True):
    """Build the ``NetParameter`` of ``dialect`` for ``layers``.

    Each entry of ``inputs`` (name -> shape) becomes an "Input" layer of that
    name with one top of that name, in order, before ``layers``. Checks what
    Caffe would abort on: duplicate layer names, a bottom no earlier layer
    produced, a top produced twice (other than in place).

    With ``with_blobs=False`` the weights are checked and converted the same
    way but kept out of the message: the result is a :class:`NetWithBlobs`
    (blob-less net, per-layer arrays) for ``writer.save_parts``, which writes
    them without encoding them into protobuf first.
    """
    pb = module_for(dialect)
    types = layer_types(dialect)
    net = pb.NetParameter(name=name)
    blobs: list | None = None if with_blobs else []
    produced: set[str] = set()
    names: set[str] = set()
    for in_name, shape in inputs.items():
        dims = list(shape)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims):
            raise MappingError(f"input {in_name!r}: shape must be positive integers, got {tuple(shape)!r}")
        _add_layer(net, Layer("Input", in_name, [], [in_name], {"shape": [{"dim": dims}]}),
                   dialect, types, produced, names, blobs)
    for layer in layers:
        _add_layer(net, layer, dialect, types, produced, names, blobs)
    return net if with_blobs else NetWithBlobs(net, blobs)


def _add_layer(net, layer: Layer, dialect, types, produced: set, names: set, blobs_out) -> None:
    ctx = f"layer {getattr(layer, 'name', '?')!r} ({getattr(layer, 'type', '?')})"
    if not isinstance(layer, Layer):
        raise MappingError(f"{ctx}: expected a netspec.Layer, got {type(layer).__name__}")
    for attr in ("type", "name"):
        if not isinstance(getattr(layer, attr), str) or not getattr(layer, attr):
            raise MappingError(f"{ctx}: {attr} must be a non-empty string")
    for attr in ("bottoms", "tops"):
        blobs = getattr(layer, attr)
        if not isinstance(blobs, (list, tuple)) or not all(isinstance(b, str) and b for b in blobs):
            raise MappingError(f"{ctx}: {attr} must be a list of non-empty strings, got {blobs!r}")
    if layer.type not in types:
        raise MappingError(f"{ctx}: unknown layer type {layer.type!r} in the {dialect} dialect")
    if layer.name in names:
        raise MappingError(f"{ctx}: a layer named {layer.name!r} already exists")
    for b in layer.bottoms:
        if b not in produced:
            raise MappingError(f"{ctx}: bottom {b!r} is not a top of any earlier layer")
    for t in layer.tops:
        if t in produced and t not in layer.bottoms:
            raise MappingError(f"{ctx}: top {t!r} is already produced by an earlier layer")

    lp = net.layer.add()
    lp.name, lp.type = layer.name, layer.type
    lp.bottom.extend(layer.bottoms)
    lp.top.extend(layer.tops)
    own = types[layer.type]
    if layer.params:
        if own is None:
            raise MappingError(f"{ctx}: layer type {layer.type!r} takes no parameters, "
                               f"got {sorted(layer.params)}")
        sub = getattr(lp, own)
        sub.SetInParent()
        _fill(sub, layer.params, ctx, own, dialect)
    elif not isinstance(layer.params, Mapping):
        raise MappingError(f"{ctx}: params must be a dict, got {type(layer.params).__name__}")
    if layer.extra:
        for key in layer.extra:
            if key in _STRUCTURAL or (own is not None and key == own):
                raise MappingError(f"{ctx}: extra field {key!r} is set from the Layer itself, not extra")
        _fill(lp, layer.extra, ctx, "", dialect)
    arrays = [blob if ready(blob) else blob_array(blob, f"{ctx}: blob {i}") for i, blob in enumerate(layer.blobs)]
    if blobs_out is None:
        for i, arr in enumerate(arrays):
            lp.blobs.add().MergeFromString(b"".join(array_blob_pieces(written_array(arr, f"{ctx}: blob {i}"))))
    else:
        blobs_out.append(arrays)
    if not lp.IsInitialized():
        missing = ", ".join(lp.FindInitializationErrors())
        raise MappingError(f"{ctx}: required field(s) not set: {missing}")
    names.add(layer.name)
    produced.update(layer.tops)


def _fill(msg, values, ctx: str, path: str, dialect: str) -> None:
    """Set the fields of protobuf ``msg`` from the dict ``values`` (recursively)."""
    desc = msg.DESCRIPTOR
    if not isinstance(values, Mapping):
        raise MappingError(f"{ctx}: {path or 'extra'} must be a dict of {desc.name} fields, "
                           f"got {type(values).__name__}")
    for key, value in values.items():
        where = f"{path}.{key}" if path else str(key)
        fd = desc.fields_by_name.get(key) if isinstance(key, str) else None
        if fd is None:
            known = ", ".join(sorted(desc.fields_by_name))
            raise MappingError(f"{ctx}: unknown field {where!r}: {desc.name} in the {dialect} "
                               f"dialect has {known}")
        if value is None:
            raise MappingError(f"{ctx}: field {where!r} is None; leave the field out instead")
        is_msg = fd.cpp_type == _FD.CPPTYPE_MESSAGE
        if is_repeated(fd):
            if isinstance(value, np.ndarray) and value.ndim == 1:
                value = value.tolist()
            if not isinstance(value, (list, tuple)):
                raise MappingError(f"{ctx}: field {where!r} is repeated: give a list, "
                                   f"got {type(value).__name__}")
            container = getattr(msg, key)
            if is_msg:
                for i, item in enumerate(value):
                    _fill(container.add(), item, ctx, f"{where}[{i}]", dialect)
            else:
                container.extend([_field_value(fd, v, ctx, f"{where}[{i}]") for i, v in enumerate(value)])
        elif is_msg:
            sub = getattr(msg, key)
            sub.SetInParent()
            _fill(sub, value, ctx, where, dialect)
        else:
            setattr(msg, key, _field_value(fd, value, ctx, where))


def _field_value(fd, value, ctx: str, where: str):
    """``value`` checked and converted for the singular field ``fd``."""
    is_bool = isinstance(value, (bool, np.bool_))
    is_int = isinstance(value, (int, np.integer)) and not is_bool
    if fd.type == _FD.TYPE_ENUM:
        enum = fd.enum_type
        if isinstance(value, str) and value in enum.values_by_name:
            return enum.values_by_name[value].number
        if is_int and int(value) in enum.values_by_number:
            return int(value)
        allowed = ", ".join(f"{v.name}={v.number}" for v in enum.values)
        raise MappingError(f"{ctx}: field {where!r}: {value!r} is not a {enum.name} value ({allowed})")
    cpp = fd.cpp_type
    if cpp == _FD.CPPTYPE_BOOL:
        if is_bool:
            return bool(value)
        raise MappingError(f"{ctx}: field {where!r} is a bool, got {type(value).__name__} {value!r}")
    if cpp in _INT_RANGES:
        kind, lo, hi = _INT_RANGES[cpp]
        if not is_int:
            raise MappingError(f"{ctx}: field {where!r} is an {kind}, got {type(value).__name__} {value!r}")
        if not lo <= int(value) <= hi:
            raise MappingError(f"{ctx}: field {where!r}: {value} is out of range for {kind}")
        return int(value)
    if cpp in (_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE):
        if not (is_int or isinstance(value, (float, np.floating))):
            raise MappingError(f"{ctx}: field {where!r} is a float, got {type(value).__name__} {value!r}")
        f = float(value)
        if cpp == _FD.CPPTYPE_FLOAT and math.isfinite(f) and abs(f) > _FLOAT32_MAX:
            raise MappingError(f"{ctx}: field {where!r}: {value} is out of range for float32")
        return f
    if cpp == _FD.CPPTYPE_STRING and fd.type == _FD.TYPE_STRING:
        if isinstance(value, str):
            return value
        raise MappingError(f"{ctx}: field {where!r} is a string, got {type(value).__name__} {value!r}")
    raise MappingError(f"{ctx}: field {where!r} has a type tracecap does not set")


