"""Write and read Caffe model files.

:func:`save` writes a ``NetParameter`` as a ``.prototxt`` (text, without blobs)
and a ``.caffemodel`` (binary, with blobs):

* atomic (``tracecap.atomic``) -- both files are written to temporary files beside their targets and
  moved into place with ``os.replace``; on any failure, including an exception
  half-way, neither a partial file nor a temporary file is left and targets
  that existed before are as they were;
* deterministic -- the same net gives byte-identical files; the caffemodel is
  exactly ``net.SerializeToString(deterministic=True)``;
* fast -- blob data is written from numpy buffers straight to the file, layer
  by layer, never through protobuf's own encoder (several times slower for big
  float arrays) nor one huge bytes object.

:func:`save_parts` writes the same files from a net built without blobs and
its weights as numpy arrays beside it (``netspec.to_net(..., with_blobs=False)``):
the arrays never enter a protobuf message, so building and writing a net costs
little more than writing its raw weights.
"""
from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format

from tracecap import atomic
from tracecap.mappers.caffe.proto import module_for
from tracecap.mappers.caffe.wire import (LAYER_BLOBS, NET_LAYER, NET_LAYER_TAG, array_blob_pieces, blob_array,
                                         copy_field, encode_varint, framed_blobs, has_unknown_fields,
                                         message_blob_pieces, split_encoded, split_fields, with_blobs)



# ------------------------------------------------------------------ public


def prototxt_text(net) -> str:
    """The prototxt of ``net``: its text format with every layer's blobs left out."""
    if not any(len(layer.blobs) for layer in net.layer):
        return text_format.MessageToString(net)
    head = type(net)()
    for fd, value in net.ListFields():
        if fd.number != NET_LAYER:
            copy_field(head, fd, value)
    for layer in net.layer:
        stripped = head.layer.add()
        for fd, value in layer.ListFields():
            if fd.number != LAYER_BLOBS:
                copy_field(stripped, fd, value)
    return text_format.MessageToString(head)


def save(net, prototxt_path, caffemodel_path, *, fsync: bool = False) -> None:
    """Write ``net`` to ``prototxt_path`` (no blobs) and ``caffemodel_path`` (with blobs).

    Both or neither: on failure the targets are left as they were. With
    ``fsync`` the data and the directory entries are also flushed to disk
    before returning (slower; guards against power loss, not against errors).
    """
    _save_files(net, prototxt_path, caffemodel_path, lambda write: _write_caffemodel(net, write), fsync)


def save_parts(net, blobs, prototxt_path, caffemodel_path, *, fsync: bool = False, extra=()) -> None:
    """Write ``net`` with ``blobs[i]`` as the blobs of ``net.layer[i]``, as :func:`save` would.

    ``net, blobs`` is what ``netspec.to_net(..., with_blobs=False)`` returns:
    ``blobs`` has one list of arrays per layer of ``net`` (empty for a layer
    without weights), and a layer given arrays must carry no blobs of its own
    (ValueError otherwise, before anything is written). The files are
    byte-identical to ``save`` of the net holding those blobs (each array as
    float32 with its shape) -- the caffemodel is that net's
    ``SerializeToString(deterministic=True)`` -- and written the same atomic
    way, but the arrays go from their buffers to the file without ever being
    encoded into protobuf messages. ``extra`` (``[(path, emit)]``, e.g. a quantization table)
    is written in the same atomic step, before the prototxt.
    """
    arrays = _checked_blobs(net, blobs)
    _save_files(net, prototxt_path, caffemodel_path,
                lambda write: _write_caffemodel(net, write, arrays), fsync, extra)


def caffemodel_bytes(net, blobs=None) -> bytes:
    """What :func:`save` (or, given ``blobs``, :func:`save_parts`) writes to the caffemodel, in memory."""
    parts: list = []
    if blobs is None:
        _write_caffemodel(net, parts.append)
    else:
        _write_caffemodel(net, parts.append, _checked_blobs(net, blobs))
    return b"".join(parts)


def load(prototxt_path, caffemodel_path=None, dialect: str = "opencv"):
    """Read a prototxt, and the blobs of a caffemodel if given, as one NetParameter.

    Blobs are attached by layer name, as Caffe does; a caffemodel holding blobs
    for a layer the prototxt lacks is an error (ValueError). Parse errors are
    protobuf's own (``text_format.ParseError``, ``DecodeError``).
    """
    pb = module_for(dialect)
    net = text_format.Parse(Path(prototxt_path).read_text(encoding="utf-8"), pb.NetParameter())
    if caffemodel_path is not None:
        weights = pb.NetParameter.FromString(Path(caffemodel_path).read_bytes())
        by_name = {layer.name: layer for layer in weights.layer if len(layer.blobs)}
        for layer in net.layer:
            source = by_name.pop(layer.name, None)
            if source is not None:
                del layer.blobs[:]
                layer.blobs.extend(source.blobs)
        if by_name:
            raise ValueError(f"{caffemodel_path}: blobs for layers not in {prototxt_path}: "
                             f"{', '.join(sorted(by_name))}")
    return net


# ------------------------------------------------------ binary encoding


def _save_files(net, prototxt_path, caffemodel_path, emit, fsync: bool, extra=()) -> None:
    """The prototxt of ``net`` and what ``emit(write)`` writes, both or neither.

    The caffemodel goes into place first, the prototxt (what a reader opens first) last.
    """
    proto_target, model_target = Path(prototxt_path), Path(caffemodel_path)
    if os.path.abspath(proto_target) == os.path.abspath(model_target):
        raise ValueError(f"prototxt and caffemodel paths are the same: {proto_target}")
    text = prototxt_text(net).encode("utf-8")
    atomic.write_files([(model_target, emit), *extra, (proto_target, lambda write: write(text))], fsync=fsync)


def _checked_blobs(net, blobs) -> list:
    """``blobs`` as one list of float32 arrays per layer of ``net``; ValueError on a mismatch."""
    try:
        per_layer = [list(arrays) for arrays in blobs]
    except TypeError:
        raise ValueError("blobs must be a list with one list of arrays per layer") from None
    if len(per_layer) != len(net.layer):
        raise ValueError(f"blobs has {len(per_layer)} entries for {len(net.layer)} layers")
    for layer, arrays in zip(net.layer, per_layer):
        if arrays and len(layer.blobs):
            raise ValueError(f"layer {layer.name!r} has blobs both in the net and given beside it")
    return [[blob_array(a, f"layer {layer.name!r} ({layer.type}): blob {i}") for i, a in enumerate(arrays)]
            for layer, arrays in zip(net.layer, per_layer)]


def _write_caffemodel(net, write, arrays=None) -> None:
    """Emit the canonical encoding of ``net`` through ``write``, piece by piece.

    Every message is split around its big field (NetParameter around ``layer``,
    LayerParameter around ``blobs``, BlobProto around ``data``); the parts
    before and after are small and serialized by protobuf, the big field is
    framed here. Fields stay in number order, so the bytes equal protobuf's
    deterministic serialization. Messages that carry unknown fields (read from
    another fork's file) are serialized by protobuf whole, so nothing is lost.

    ``arrays`` (from :func:`_checked_blobs`), if given, are the blobs of the
    layers in that order, encoded by ``wire.array_blob_pieces`` from their buffers.
    """
    if has_unknown_fields(net):
        if arrays is not None:
            net = with_blobs(net, arrays)
        write(net.SerializeToString(deterministic=True))
        return
    before, after = split_fields(net, NET_LAYER)
    write(before)
    for i, layer in enumerate(net.layer):
        pieces = _layer_pieces(layer, arrays[i] if arrays is not None else ())
        write(NET_LAYER_TAG + encode_varint(sum(len(p) for p in pieces)))
        for p in pieces:
            write(p)
    write(after)


def _layer_pieces(layer, arrays=()) -> list:
    if arrays and has_unknown_fields(layer):
        layer = with_blobs(layer, [arrays])
    elif arrays:  # the layer has no blobs: cut its own encoding where they go
        split = split_encoded(layer.SerializeToString(deterministic=True), LAYER_BLOBS)
        return framed_blobs(split, [array_blob_pieces(a) for a in arrays])
    if has_unknown_fields(layer) or not len(layer.blobs):
        return [layer.SerializeToString(deterministic=True)]
    return framed_blobs(split_fields(layer, LAYER_BLOBS), [message_blob_pieces(blob) for blob in layer.blobs])
