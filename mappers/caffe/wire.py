"""The protobuf wire format, as far as Caffe files need it by hand.

Big float arrays are far cheaper to frame around their own buffers than to encode through
protobuf's message classes, so the writer builds a caffemodel from pieces: varints and
length-delimited tags, a BlobProto's bytes from a numpy array, and messages cut around their
big field. The bytes are always those of protobuf's deterministic serialization (fields in
number order). ``netspec`` uses ``array_blob_pieces`` to put blobs into messages; ``writer``
uses the rest.
"""
from __future__ import annotations

import numpy as np
from google.protobuf.descriptor import FieldDescriptor

from tracecap.errors import MappingError

# field numbers of the messages cut by hand, and their length-delimited tags
NET_LAYER = 100   # NetParameter.layer
LAYER_BLOBS = 7   # LayerParameter.blobs
BLOB_DATA = 5     # BlobProto.data (packed float)
_DATA_TAG = bytes([(5 << 3) | 2])   # BlobProto.data (packed float), length-delimited
_SHAPE_TAG = bytes([(7 << 3) | 2])  # BlobProto.shape (BlobShape), length-delimited
_DIM_TAG = bytes([(1 << 3) | 2])    # BlobShape.dim (packed int64), length-delimited


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 0x80:  # the common case (tags, dims, small lengths)
        return _ONE_BYTE[value]
    if value < 0x4000:  # layer and blob headers
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def length_delimited_tag(number: int) -> bytes:
    """The key of field ``number`` with wire type 2 (length-delimited)."""
    return encode_varint((number << 3) | 2)


NET_LAYER_TAG, LAYER_BLOBS_TAG = length_delimited_tag(NET_LAYER), length_delimited_tag(LAYER_BLOBS)


def is_repeated(fd) -> bool:
    """Is ``fd`` a repeated field (protobuf 4 to 7)?"""
    rep = getattr(fd, "is_repeated", None)  # protobuf >= 6 (where `label` is going away)
    if isinstance(rep, bool):
        return rep
    return fd.label == FieldDescriptor.LABEL_REPEATED


def blob_array(blob, ctx: str = "blob") -> np.ndarray:
    """``blob`` as the array a Caffe blob stores: float32, little-endian, C order.

    No copy when it already is one; 0-d arrays stay 0-d. Raises MappingError
    (prefixed with ``ctx``) for what cannot be stored as float32.
    """
    try:
        arr = np.asarray(blob)
    except Exception as e:  # e.g. a tensor that requires grad
        raise MappingError(f"{ctx}: cannot be read as an array: {e}") from e
    if arr.dtype.kind not in "biuf":
        raise MappingError(f"{ctx}: dtype {arr.dtype} cannot be stored in a Caffe blob (float32)")
    return np.asarray(arr, dtype="<f4", order="C")


def array_blob_pieces(arr: np.ndarray) -> list:
    """The canonical encoding of the BlobProto holding ``arr`` (a :func:`blob_array`), in pieces.

    Fields in number order, as protobuf's deterministic serialization has
    them: ``data`` (5, packed float: the array's own buffer, not copied) when
    non-empty, then ``shape`` (7, a BlobShape of packed int64 dims; always
    present, empty for a 0-d array). ``b"".join`` of the pieces is the message.
    The one encoder of array blobs: ``netspec.to_net`` parses it into BlobProto
    messages and ``writer.save_parts`` writes it straight to the file.
    """
    dims = _packed_dims(arr.shape)
    shape = _DIM_TAG + encode_varint(len(dims)) + dims if dims else b""
    pieces = packed_float_field(memoryview(arr if arr.ndim else arr.reshape(-1)).cast("B")) if arr.size else []
    pieces.append(_SHAPE_TAG + encode_varint(len(shape)) + shape)
    return pieces


def _packed_dims(shape) -> bytes:
    """The varints of ``shape``'s dims one after the other (each dim below 128 is its own byte)."""
    if shape and max(shape) < 0x80:
        return bytes(shape)
    return b"".join(encode_varint(int(d)) for d in shape)


def packed_float_field(view) -> list:
    """BlobProto.data framed around the little-endian float32 bytes ``view``: [tag + length, view]."""
    return [_DATA_TAG + encode_varint(view.nbytes), view]



def framed_blobs(split: tuple[bytes, bytes], blobs: list) -> list:
    """A layer's fields before and after ``blobs``, with the encoded ``blobs`` framed between."""
    before, after = split
    pieces = [before]
    for blob in blobs:
        pieces.append(LAYER_BLOBS_TAG + encode_varint(sum(len(p) for p in blob)))
        pieces.extend(blob)
    pieces.append(after)
    return pieces


def message_blob_pieces(blob) -> list:
    """The encoding of a BlobProto *message* in pieces, its data framed from its own buffer."""
    if has_unknown_fields(blob) or not len(blob.data):
        return [blob.SerializeToString(deterministic=True)]
    before, after = split_fields(blob, BLOB_DATA)
    # upb's repeated container hands numpy its buffer (__array__): one memcpy.
    data = np.asarray(blob.data, dtype="<f4")
    return [before, *packed_float_field(memoryview(data).cast("B")), after]


def with_blobs(msg, arrays):
    """A copy of NetParameter or LayerParameter ``msg`` with ``arrays`` parsed into its layers' blobs.

    The slow, general path, for messages with unknown fields that cannot be split.
    """
    full = type(msg)()
    full.CopyFrom(msg)
    layers = full.layer if full.DESCRIPTOR.name == "NetParameter" else [full]
    for layer, blobs in zip(layers, arrays):
        for arr in blobs:
            layer.blobs.add().MergeFromString(b"".join(array_blob_pieces(arr)))
    return full

def split_fields(msg, number: int) -> tuple[bytes, bytes]:
    """Serializations of ``msg``'s fields numbered below and above ``number``."""
    low, high = type(msg)(), type(msg)()
    for fd, value in msg.ListFields():
        if fd.number != number:
            copy_field(low if fd.number < number else high, fd, value)
    return low.SerializeToString(deterministic=True), high.SerializeToString(deterministic=True)


def split_encoded(data: bytes, number: int) -> tuple[bytes, bytes]:
    """The canonical encoding ``data`` of a message cut before its first field numbered above ``number``.

    Walks the top-level fields only (deterministic serialization writes known
    fields in number order); for messages without field ``number`` and without
    unknown fields, it is what :func:`split_fields` gives, for a fraction of the cost.
    """
    pos, end = 0, len(data)
    while pos < end:
        key, p = read_varint(data, pos)
        if key >> 3 > number:
            break
        wire = key & 7
        if wire == 0:
            p = read_varint(data, p)[1]
        elif wire == 2:
            size, p = read_varint(data, p)
            p += size
        elif wire in (1, 5):
            p += 8 if wire == 1 else 4
        else:  # groups: not in caffe.proto
            raise ValueError(f"unexpected wire type {wire} at byte {pos}")
        pos = p
    return data[:pos], data[pos:]


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def copy_field(target, fd, value) -> None:
    if is_repeated(fd):
        getattr(target, fd.name).extend(value)
    elif fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        getattr(target, fd.name).CopyFrom(value)
    else:
        setattr(target, fd.name, value)


try:
    from google.protobuf.unknown_fields import UnknownFieldSet as _unknown_fields  # protobuf >= 4.24
except ImportError:  # pragma: no cover - old runtimes
    def _unknown_fields(msg):
        return msg.UnknownFields()


def has_unknown_fields(msg) -> bool:
    return len(_unknown_fields(msg)) > 0
