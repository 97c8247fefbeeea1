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
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from tracecap.mappers.caffe.netspec import _is_repeated, encode_varint
from tracecap.mappers.caffe.proto import module_for

_LAYER_NUMBER = 100  # NetParameter.layer
_BLOBS_NUMBER = 7    # LayerParameter.blobs
_DATA_NUMBER = 5     # BlobProto.data (packed float)


def _tag(number: int) -> bytes:
    return encode_varint((number << 3) | 2)


_LAYER_TAG, _BLOBS_TAG, _DATA_TAG = _tag(_LAYER_NUMBER), _tag(_BLOBS_NUMBER), _tag(_DATA_NUMBER)


# ------------------------------------------------------------------ public


def prototxt_text(net) -> str:
    """The prototxt of ``net``: its text format with every layer's blobs left out."""
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
            _write_caffemodel(net, f.write)
            _finish(f, fsync)
        _replace_all([(temps[1], model_target), (temps[0], proto_target)], fsync)
    finally:
        for t in temps:
            _unlink_quietly(t)


def caffemodel_bytes(net) -> bytes:
    """What :func:`save` writes to the caffemodel, in memory."""
    parts: list = []
    _write_caffemodel(net, parts.append)
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


def _write_caffemodel(net, write) -> None:
    """Emit the canonical encoding of ``net`` through ``write``, piece by piece.

    Every message is split around its big field (NetParameter around ``layer``,
    LayerParameter around ``blobs``, BlobProto around ``data``); the parts
    before and after are small and serialized by protobuf, the big field is
    framed here. Fields stay in number order, so the bytes equal protobuf's
    deterministic serialization. Messages that carry unknown fields (read from
    another fork's file) are serialized by protobuf whole, so nothing is lost.
    """
    if _has_unknown_fields(net):
        write(net.SerializeToString(deterministic=True))
        return
    before, after = _split(net, _LAYER_NUMBER)
    write(before)
    for layer in net.layer:
        pieces = _layer_pieces(layer)
        write(_LAYER_TAG + encode_varint(sum(len(p) for p in pieces)))
        for p in pieces:
            write(p)
    write(after)


def _layer_pieces(layer) -> list:
    if _has_unknown_fields(layer) or not len(layer.blobs):
        return [layer.SerializeToString(deterministic=True)]
    before, after = _split(layer, _BLOBS_NUMBER)
    pieces = [before]
    for blob in layer.blobs:
        blob_pieces = _blob_pieces(blob)
        pieces.append(_BLOBS_TAG + encode_varint(sum(len(p) for p in blob_pieces)))
        pieces.extend(blob_pieces)
    pieces.append(after)
    return pieces


def _blob_pieces(blob) -> list:
    if _has_unknown_fields(blob) or not len(blob.data):
        return [blob.SerializeToString(deterministic=True)]
    before, after = _split(blob, _DATA_NUMBER)
    # upb's repeated container hands numpy its buffer (__array__): one memcpy.
    data = np.asarray(blob.data, dtype="<f4")
    view = memoryview(data).cast("B")
    return [before, _DATA_TAG + encode_varint(view.nbytes), view, after]


def _split(msg, number: int) -> tuple[bytes, bytes]:
    """Serializations of ``msg``'s fields numbered below and above ``number``."""
    low, high = type(msg)(), type(msg)()
    for fd, value in msg.ListFields():
        if fd.number != number:
            _copy_field(low if fd.number < number else high, fd, value)
    return low.SerializeToString(deterministic=True), high.SerializeToString(deterministic=True)


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
