"""``load_checkpoint``: detect the format, read it safely, return CPU tensors.

The safe path executes nothing from the file (see ``unpickler``).  ``trust=True`` hands the file
to ``torch.load(weights_only=False)``, which imports and runs whatever the pickle names; that is
only for files whose author you trust, and it says so loudly every time.
"""
from __future__ import annotations

import io
import os
import warnings

import torch

from tracecap.errors import CheckpointError

from .detect import detect_format
from .legacy_pickle_format import read_pickle_or_legacy
from .result import Checkpoint
from .tar_format import read_tar
from .torch7 import read_torch7
from .zip_format import read_zip

_READERS = {"zip": read_zip, "tar": read_tar, "legacy": read_pickle_or_legacy, "pickle": read_pickle_or_legacy,
            "torch7": read_torch7}
_HEAD = 512


class TrustWarning(UserWarning):
    """Emitted whenever a checkpoint is loaded with ``trust=True`` (code from the file may run)."""


def _check_map_location(map_location):
    if map_location is None or map_location == "cpu" or map_location == torch.device("cpu"):
        return
    raise ValueError(f"safe loading always puts tensors on the CPU; map_location={map_location!r} is not "
                     f"supported (move tensors yourself after loading, or use trust=True)")


def read_stream(f, name: str, depth: int = 0, progress=None) -> Checkpoint:
    """Read one checkpoint from a seekable binary file object (``progress``: see :func:`load_checkpoint`)."""
    size = f.seek(0, io.SEEK_END)
    f.seek(0)
    head = f.read(_HEAD)
    kind = detect_format(head, size, name)

    def nested(data: bytes):
        if depth >= 1:
            raise CheckpointError(f"{name}: storages nested inside nested storages are not supported")
        inner = read_stream(io.BytesIO(data), f"{name} (embedded storage)", depth + 1)
        outer_storages.extend(inner.info.storages)
        return inner.obj

    outer_storages = []
    if kind == "zip":
        obj, info = read_zip(f, size, name, nested, progress)
    else:
        obj, info = _READERS[kind](f, size, name, nested)
        if progress is not None:  # these formats read their storages in one go: report it once
            total = sum(ref.nbytes for ref in info.storages)
            progress(total, total)
    info.storages.extend(outer_storages)
    return Checkpoint(obj, info)


def read_checkpoint(path, map_location="cpu", progress=None) -> Checkpoint:
    """The object (tensors on the CPU) and facts about the file, without running any of its code."""
    _check_map_location(map_location)
    name = os.fspath(path)
    try:
        f = open(name, "rb")
    except FileNotFoundError:
        raise CheckpointError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{name} is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{name}: cannot open: {exc.strerror or exc}") from None
    with f:
        try:
            return read_stream(f, name, progress=progress)
        except OSError as exc:
            raise CheckpointError(f"{name}: read error: {exc}") from exc
        except CheckpointError as exc:
            if name in str(exc):
                raise
            raise CheckpointError(f"{name}: {exc}") from exc  # every message names the file


def load_checkpoint(path, map_location="cpu", trust: bool = False, progress=None):
    """Load a PyTorch checkpoint of any format (tar, legacy, zip, plain pickle) onto the CPU.

    Safe by default: no code from the file runs.  Unknown classes come back as ``Opaque``
    placeholders, pickled nn.Modules as ``ModuleNode`` trees.  ``trust=True`` delegates to
    ``torch.load(weights_only=False)`` — which executes the file's pickled code — after a warning.
    Raises ``tracecap.CheckpointError`` for unreadable, damaged or hostile files.

    ``progress(done_bytes, total_bytes)``, if given, is called as storages are read (after each
    storage of a zip file; once, at the end, for the other formats and with ``trust``), ``done``
    growing to ``total``, the bytes of tensor data in the file.
    """
    if trust:
        warnings.warn(
            f"TRUST=True: loading {os.fspath(path)!r} with torch.load(weights_only=False). This IMPORTS AND "
            f"RUNS CODE named by the file; do this only for files from authors you trust.",
            TrustWarning, stacklevel=2)
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"{os.fspath(path)}: torch.load failed: {type(exc).__name__}: {exc}") from exc
        if progress is not None:
            size = os.path.getsize(path)
            progress(size, size)
        return obj
    return read_checkpoint(path, map_location, progress).obj
