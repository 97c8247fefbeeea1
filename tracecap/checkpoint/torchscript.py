"""TorchScript archives (``torch.jit.save``) read as data: the module tree and its tensors, no code run.

A TorchScript file is a zip like ``torch.save``'s, with the same ``data.pkl`` (objects of classes
named ``__torch__.<module path>``, tensors as persistent storage ids over ``data/<key>``) plus the
model's compiled source under ``code/``, ``constants.pkl`` and debug records. ``zip_format`` reads
``data.pkl`` with the same restricted unpickler as any checkpoint; this module recognises the
archive and reports, from the source *text* only, which quantized ops the code calls - many users
of quantized models only have this file.
"""
from __future__ import annotations

import re

MARKERS = ("/constants.pkl", "/code/")
MAX_CODE_BYTES = 16 << 20
_QUANTIZED_CALL = re.compile(rb"ops\.quantized\.([A-Za-z_][A-Za-z0-9_]*)")
_QUANTIZED_CLASS = re.compile(rb"__torch__\.torch\.classes\.quantized\.([A-Za-z_][A-Za-z0-9_]*)")


def is_torchscript(record_names) -> bool:
    return any(any(m in n for m in MARKERS) for n in record_names)


def annotate(info, records, prefix: str) -> None:
    """Mark ``info`` as a TorchScript archive and note what its code files say (read as text only)."""
    info.format = "torchscript"
    code = sorted(n for n in records.infos if n.startswith(prefix + "code/") and n.endswith(".py"))
    calls, classes, budget = set(), set(), MAX_CODE_BYTES
    for name in code:
        size = records.infos[name].file_size
        if size > budget:
            info.notes.append(f"code files beyond {MAX_CODE_BYTES >> 20} MB were not scanned")
            break
        budget -= size
        text = _read_text(records, name, size)
        calls.update(m.decode() for m in _QUANTIZED_CALL.findall(text))
        classes.update(m.decode() for m in _QUANTIZED_CLASS.findall(text))
    info.notes.append(f"TorchScript archive: {len(code)} code file(s) under {prefix}code/, read as text and never "
                      f"run; tensors and attributes come from {prefix}data.pkl")
    if calls:
        info.notes.append("the code calls quantized ops: " + ", ".join(f"quantized::{c}" for c in sorted(calls)))
    if classes:
        info.notes.append("packed-parameter classes: " + ", ".join(sorted(classes)))


def _read_text(records, name, size):
    """A code record's bytes (TorchScript deflates them; zipfile checks the CRC), at most ``size``."""
    import zipfile
    from tracecap.errors import CheckpointError
    try:
        with records.zf.open(name) as f:
            data = f.read(size + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise CheckpointError(f"{records.name}: code record {name!r} is damaged: {exc}") from exc
    if len(data) > size:
        raise CheckpointError(f"{records.name}: code record {name!r} is larger than its header says")
    return data
