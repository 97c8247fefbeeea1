"""Write and read Caffe model files.

:func:`save` writes a ``NetParameter`` as a ``.prototxt`` (text, without blobs)
and a ``.caffemodel`` (binary, with blobs):

* atomic -- both files are written to temporary files beside their targets and
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
import tempfile
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from tracecap.mappers.caffe.netspec import (_is_repeated, blob_array, blob_pieces, encode_varint,
                                            packed_float_field)
from tracecap.mappers.caffe.proto import module_for

_LAYER_NUMBER = 100  # NetParameter.layer
_BLOBS_NUMBER = 7    # LayerParameter.blobs
_DATA_NUMBER = 5     # BlobProto.data (packed float)


def _tag(number: int) -> bytes:
    return encode_varint((number << 3) | 2)


_LAYER_TAG, _BLOBS_TAG = _tag(_LAYER_NUMBER), _tag(_BLOBS_NUMBER)


# ------------------------------------------------------------------ public


def prototxt_text(net) -> str:
    """The prototxt of ``net``: its text format with every layer's blobs left out."""
    if not any(len(layer.blobs) for layer in net.layer):
        return text_format.MessageToString(net)
    head = type(net)()
    for fd, value in net.ListFields():
        if fd.number != _LAYER_NUMBER:
            _copy_field(head, fd, value)
    for layer in net.layer:
        stripped = head.layer.add()
        for fd, value in layer.ListFields():
            if fd.number != _BLOBS_NUMBER:
                _copy_field(stripped, fd, value)
    return text_format.MessageToString(head)


def save(net, prototxt_path, caffemodel_path, *, fsync: bool = False) -> None:
    """Write ``net`` to ``prototxt_path`` (no blobs) and ``caffemodel_path`` (with blobs).

    Both or neither: on failure the targets are left as they were. With
    ``fsync`` the data and the directory entries are also flushed to disk
    before returning (slower; guards against power loss, not against errors).
    """
    _save_files(net, prototxt_path, caffemodel_path, lambda write: _write_caffemodel(net, write), fsync)


def save_parts(net, blobs, prototxt_path, caffemodel_path, *, fsync: bool = False) -> None:
    """Write ``net`` with ``blobs[i]`` as the blobs of ``net.layer[i]``, as :func:`save` would.

    ``net, blobs`` is what ``netspec.to_net(..., with_blobs=False)`` returns:
    ``blobs`` has one list of arrays per layer of ``net`` (empty for a layer
    without weights), and a layer given arrays must carry no blobs of its own
    (ValueError otherwise, before anything is written). The files are
    byte-identical to ``save`` of the net holding those blobs (each array as
    float32 with its shape) -- the caffemodel is that net's
    ``SerializeToString(deterministic=True)`` -- and written the same atomic
    way, but the arrays go from their buffers to the file without ever being
    encoded into protobuf messages.
    """
    arrays = _checked_blobs(net, blobs)
    _save_files(net, prototxt_path, caffemodel_path,
                lambda write: _write_caffemodel(net, write, arrays), fsync)


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


def _save_files(net, prototxt_path, caffemodel_path, emit, fsync: bool) -> None:
    """The prototxt of ``net`` and what ``emit(write)`` writes, both or neither."""
    proto_target, model_target = Path(prototxt_path), Path(caffemodel_path)
    if os.path.abspath(proto_target) == os.path.abspath(model_target):
        raise ValueError(f"prototxt and caffemodel paths are the same: {proto_target}")
    text = prototxt_text(net).encode("utf-8")
    temps: list[Path] = []
    try:
        tmp_proto = _open_temp(proto_target, temps)
        with tmp_proto as f:
            f.write(text)
            _finish(f, fsync)
        tmp_model = _open_temp(model_target, temps)
        with tmp_model as f:
            emit(f.write)
            _finish(f, fsync)
        _replace_all([(temps[1], model_target), (temps[0], proto_target)], fsync)
    finally:
        for t in temps:
            _unlink_quietly(t)


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
    layers in that order, encoded by ``netspec.blob_pieces`` from their buffers.
    """
    if _has_unknown_fields(net):
        if arrays is not None:
            net = _with_blobs(net, arrays)
        write(net.SerializeToString(deterministic=True))
        return
    before, after = _split(net, _LAYER_NUMBER)
    write(before)
    for i, layer in enumerate(net.layer):
        pieces = _layer_pieces(layer, arrays[i] if arrays is not None else ())
        write(_LAYER_TAG + encode_varint(sum(len(p) for p in pieces)))
        for p in pieces:
            write(p)
    write(after)


def _layer_pieces(layer, arrays=()) -> list:
    if arrays and _has_unknown_fields(layer):
        layer = _with_blobs(layer, [arrays])
    elif arrays:  # the layer has no blobs: cut its own encoding where they go
        split = _split_encoded(layer.SerializeToString(deterministic=True), _BLOBS_NUMBER)
        return _framed_blobs(split, [blob_pieces(a) for a in arrays])
    if _has_unknown_fields(layer) or not len(layer.blobs):
        return [layer.SerializeToString(deterministic=True)]
    return _framed_blobs(_split(layer, _BLOBS_NUMBER), [_blob_pieces(blob) for blob in layer.blobs])


def _framed_blobs(split: tuple[bytes, bytes], blobs: list) -> list:
    """A layer's fields before and after ``blobs``, with the encoded ``blobs`` framed between."""
    before, after = split
    pieces = [before]
    for blob in blobs:
        pieces.append(_BLOBS_TAG + encode_varint(sum(len(p) for p in blob)))
        pieces.extend(blob)
    pieces.append(after)
    return pieces


def _blob_pieces(blob) -> list:
    if _has_unknown_fields(blob) or not len(blob.data):
        return [blob.SerializeToString(deterministic=True)]
    before, after = _split(blob, _DATA_NUMBER)
    # upb's repeated container hands numpy its buffer (__array__): one memcpy.
    data = np.asarray(blob.data, dtype="<f4")
    return [before, *packed_float_field(memoryview(data).cast("B")), after]


def _with_blobs(msg, arrays):
    """A copy of NetParameter or LayerParameter ``msg`` with ``arrays`` parsed into its layers' blobs.

    The slow, general path, for messages with unknown fields that cannot be split.
    """
    full = type(msg)()
    full.CopyFrom(msg)
    layers = full.layer if full.DESCRIPTOR.name == "NetParameter" else [full]
    for layer, blobs in zip(layers, arrays):
        for arr in blobs:
            layer.blobs.add().MergeFromString(b"".join(blob_pieces(arr)))
    return full


def _split(msg, number: int) -> tuple[bytes, bytes]:
    """Serializations of ``msg``'s fields numbered below and above ``number``."""
    low, high = type(msg)(), type(msg)()
    for fd, value in msg.ListFields():
        if fd.number != number:
            _copy_field(low if fd.number < number else high, fd, value)
    return low.SerializeToString(deterministic=True), high.SerializeToString(deterministic=True)


def _split_encoded(data: bytes, number: int) -> tuple[bytes, bytes]:
    """The canonical encoding ``data`` of a message cut before its first field numbered above ``number``.

    Walks the top-level fields only (deterministic serialization writes known
    fields in number order); for messages without field ``number`` and without
    unknown fields, it is what :func:`_split` gives, for a fraction of the cost.
    """
    pos, end = 0, len(data)
    while pos < end:
        key, p = _read_varint(data, pos)
        if key >> 3 > number:
            break
        wire = key & 7
        if wire == 0:
            p = _read_varint(data, p)[1]
        elif wire == 2:
            size, p = _read_varint(data, p)
            p += size
        elif wire in (1, 5):
            p += 8 if wire == 1 else 4
        else:  # groups: not in caffe.proto
            raise ValueError(f"unexpected wire type {wire} at byte {pos}")
        pos = p
    return data[:pos], data[pos:]


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _copy_field(target, fd, value) -> None:
    if _is_repeated(fd):
        getattr(target, fd.name).extend(value)
    elif fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        getattr(target, fd.name).CopyFrom(value)
    else:
        setattr(target, fd.name, value)


def _has_unknown_fields(msg) -> bool:
    try:
        from google.protobuf import unknown_fields  # protobuf >= 4.24
    except ImportError:  # pragma: no cover - old runtimes
        return len(msg.UnknownFields()) > 0
    return len(unknown_fields.UnknownFieldSet(msg)) > 0


# ------------------------------------------------------- atomic files


def _open_temp(target: Path, temps: list):
    """A new temporary file beside ``target``, recorded in ``temps`` at once."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    temps.append(Path(name))
    f = os.fdopen(fd, "wb")
    try:
        os.chmod(name, _mode_for(target))
    except BaseException:
        f.close()
        raise
    return f


def _mode_for(target: Path) -> int:
    """Keep an existing target's permissions; a new file gets the umask's."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux exposes it without changing it (os.umask would, for all threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _finish(f, fsync: bool) -> None:
    if fsync:
        f.flush()
        os.fsync(f.fileno())


def _replace_all(pairs, fsync: bool) -> None:
    """``os.replace`` every (temp, target); if one fails, undo the ones before.

    Before a target is replaced it is hard-linked to a backup name, so it can
    be put back; where hard links are unavailable the undo of that target is
    not possible (the replace itself is still atomic).
    """
    done: list[tuple[Path, bool, Path | None]] = []
    backups: list[Path] = []
    try:
        for temp, target in pairs:
            existed = os.path.lexists(target)
            backup = _link_backup(target) if existed else None
            if backup is not None:
                backups.append(backup)
            os.replace(temp, target)
            done.append((target, existed, backup))
        if fsync:
            for parent in sorted({os.path.abspath(t.parent) for _, t in pairs}):
                _fsync_dir(parent)
    except BaseException:
        for target, existed, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            elif not existed:
                _unlink_quietly(target)
        raise
    finally:
        for b in backups:
            _unlink_quietly(b)


def _link_backup(target: Path) -> Path | None:
    for attempt in range(100):
        backup = target.parent / f".{target.name}.{os.getpid()}.{attempt}.bak"
        try:
            os.link(target, backup)
            return backup
        except FileExistsError:
            continue
        except OSError:
            return None
    return None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
