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
  float arrays) nor one huge bytes object; the file's blocks are reserved up
  front (``atomic``'s size hint), which writes faster than growing it.

:func:`save_parts` writes the same files from a net built without blobs and
its weights as numpy arrays beside it (``netspec.to_net(..., with_blobs=False)``):
the arrays never enter a protobuf message, so building and writing a net costs
little more than writing its raw weights. A ``LazyBlob`` among them is made
right before its layer is written and dropped after it, so the extra memory is
one layer's transformed weights, not a copy of the model.

Both take ``progress``: ``progress(done_bytes, total_bytes)`` is called as blob
data reaches the file (after every layer with blobs, and every 64 MiB within a
big blob), ``done`` growing to ``total``, the bytes of all blob data.
"""
from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format

from tracecap import atomic
from tracecap.mappers.caffe.lazy_blob import LazyBlob, ready, written_array
from tracecap.mappers.caffe.proto import module_for
from tracecap.mappers.caffe.prototxt import prototxt_text
from tracecap.mappers.caffe.wire import (LAYER_BLOBS, NET_LAYER, NET_LAYER_TAG, array_blob_pieces, blob_array,
                                         encode_varint, framed_blobs, has_unknown_fields, message_blob_pieces,
                                         split_encoded, split_fields, with_blobs)

__all__ = ["prototxt_text", "save", "save_parts", "caffemodel_bytes", "load"]


# ------------------------------------------------------------------ public


def save(net, prototxt_path, caffemodel_path, *, fsync: bool = False, progress=None) -> None:
    """Write ``net`` to ``prototxt_path`` (no blobs) and ``caffemodel_path`` (with blobs).

    Both or neither: on failure the targets are left as they were. With
    ``fsync`` the data and the directory entries are also flushed to disk
    before returning (slower; guards against power loss, not against errors).
    ``progress(done_bytes, total_bytes)``: see the module docstring.
    """
    _save_files(net, None, prototxt_path, caffemodel_path, fsync, progress=progress)


def save_parts(net, blobs, prototxt_path, caffemodel_path, *, fsync: bool = False, extra=(),
               progress=None) -> None:
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
    is written in the same atomic step, before the prototxt. A blob may be a ``LazyBlob``
    (made while its layer is written).
    """
    _save_files(net, _checked_blobs(net, blobs), prototxt_path, caffemodel_path, fsync, extra, progress)


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


def _save_files(net, arrays, prototxt_path, caffemodel_path, fsync: bool, extra=(), progress=None) -> None:
    """The prototxt of ``net`` and its caffemodel (blobs from ``arrays`` if given), both or neither.

    The caffemodel goes into place first, the prototxt (what a reader opens first) last.
    """
    proto_target, model_target = Path(prototxt_path), Path(caffemodel_path)
    if os.path.abspath(proto_target) == os.path.abspath(model_target):
        raise ValueError(f"prototxt and caffemodel paths are the same: {proto_target}")
    text = prototxt_text(net).encode("utf-8")
    data_bytes = _data_bytes(net, arrays)

    def emit(write):
        args = (net, write) if arrays is None else (net, write, arrays)
        if progress is None:
            _write_caffemodel(*args)
        else:
            _write_caffemodel(*args, report=_Progress(progress, data_bytes))

    # the whole file is reserved (a bound from above; atomic cuts it where the writing ends)
    atomic.write_files([(model_target, emit, _size_bound(net, arrays)), *extra,
                        (proto_target, lambda write: write(text))], fsync=fsync)


def _data_bytes(net, arrays) -> int:
    """Bytes of blob data the caffemodel holds (float32 values), from lengths and shapes only."""
    total = sum(4 * len(blob.data) for layer in net.layer for blob in layer.blobs)
    if arrays is not None:
        total += sum(a.nbytes for per_layer in arrays for a in per_layer)
    return total


def _size_bound(net, arrays) -> int:
    """At least the caffemodel's size: the message as it stands, plus every array beside it with the most
    its framing can take (a BlobProto's tags and varint lengths, 10 bytes per dim, the layer's length
    growing by up to 10 bytes). A net carrying blobs itself gets only its blob data (upb's ``ByteSize``
    encodes the whole message: for 100 MB of blobs, 10x the time of writing them)."""
    if any(len(layer.blobs) for layer in net.layer):
        return _data_bytes(net, arrays)
    total = net.ByteSize()
    if arrays is not None:
        total += sum(10 + sum(a.nbytes + 48 + 10 * a.ndim for a in per_layer) for per_layer in arrays if per_layer)
    return total


_CHUNK = 64 << 20  # progress is reported at least this often within a big blob


class _Progress:
    """Counts blob bytes written and tells ``callback(done, total)``."""

    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def add(self, n: int) -> None:
        self.done += n
        self.callback(self.done, self.total)

    def finish(self) -> None:
        if self.done != self.total or not self.total:
            self.done = self.total
            self.callback(self.done, self.total)


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
    return [[a if ready(a) else blob_array(a, f"layer {layer.name!r} ({layer.type}): blob {i}")
             for i, a in enumerate(arrays)]
            for layer, arrays in zip(net.layer, per_layer)]


def _write_caffemodel(net, write, arrays=None, report=None) -> None:
    """Emit the canonical encoding of ``net`` through ``write``, piece by piece.

    Every message is split around its big field (NetParameter around ``layer``,
    LayerParameter around ``blobs``, BlobProto around ``data``); the parts
    before and after are small and serialized by protobuf, the big field is
    framed here. Fields stay in number order, so the bytes equal protobuf's
    deterministic serialization. Messages that carry unknown fields (read from
    another fork's file) are serialized by protobuf whole, so nothing is lost.

    ``arrays`` (from :func:`_checked_blobs`), if given, are the blobs of the
    layers in that order, encoded by ``wire.array_blob_pieces`` from their buffers;
    a layer's ``LazyBlob`` s are made just before it is written. ``report`` (a
    :class:`_Progress`) hears of every blob's data once written.
    """
    if has_unknown_fields(net):
        if arrays is not None:
            net = with_blobs(net, [[written_array(a) for a in per_layer] for per_layer in arrays])
        write(net.SerializeToString(deterministic=True))
        if report is not None:
            report.finish()
        return
    before, after = split_fields(net, NET_LAYER)
    write(before)
    for i, layer in enumerate(net.layer):
        own = arrays[i] if arrays is not None else ()
        if any(isinstance(a, LazyBlob) for a in own):  # made now, dropped once the layer is written
            own = [written_array(a, f"layer {layer.name!r}: blob {k}") for k, a in enumerate(own)]
        pieces = _layer_pieces(layer, own)
        small = [NET_LAYER_TAG + encode_varint(sum(map(len, pieces)))]  # headers between blobs: one write
        for p in pieces:
            if type(p) is not memoryview:
                small.append(p)
                continue
            write(b"".join(small))
            small.clear()
            if report is None:
                write(p)
                continue
            for start in range(0, len(p), _CHUNK):  # blob data, reported as it goes
                part = p[start:start + _CHUNK]
                write(part)
                report.add(len(part))
        write(b"".join(small))
    write(after)
    if report is not None:
        report.finish()


def _layer_pieces(layer, arrays=()) -> list:
    if arrays and has_unknown_fields(layer):
        layer = with_blobs(layer, [arrays])
    elif arrays:  # the layer has no blobs: cut its own encoding where they go
        split = split_encoded(layer.SerializeToString(deterministic=True), LAYER_BLOBS)
        return framed_blobs(split, [array_blob_pieces(a) for a in arrays])
    if has_unknown_fields(layer) or not len(layer.blobs):
        return [layer.SerializeToString(deterministic=True)]
    return framed_blobs(split_fields(layer, LAYER_BLOBS), [message_blob_pieces(blob) for blob in layer.blobs])
