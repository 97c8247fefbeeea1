"""Files of a quantized program: ``manifest.json`` + ``arrays.npz``, written together or not at all.

``write`` goes through ``tracecap.atomic.write_files`` (both files or neither, nothing
half-written); ``load`` reads them back with ``np.load(allow_pickle=False)`` (the arrays file
cannot run code) and checks the manifest before anything uses it; ``reencode`` rewrites a
program's int8 arrays as uint8 (+128 on values and zero points) or back, losslessly.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from tracecap import atomic
from tracecap.quant.errors import QuantError
from tracecap.quant.program import FORMAT, INT8_OFFSET, VERSION, Program, encode

MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
_REQUIRED = ("format", "version", "engine", "arithmetic", "inputs", "outputs", "tensors", "ops")


def write(program, out_dir):
    """Write ``program`` into directory ``out_dir`` (created if missing); returns the manifest path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QuantError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    manifest = dict(program.manifest, arrays_file=ARRAYS)
    text = (dumps(manifest) + "\n").encode("utf-8")
    buf = io.BytesIO()
    np.savez(buf, **program.arrays)
    data = buf.getvalue()
    atomic.write_files([(out / ARRAYS, lambda w: w(data)), (out / MANIFEST, lambda w: w(text))])
    return out / MANIFEST


def dumps(obj, indent=0):
    """JSON with one key per line but short lists of numbers/strings on one line (readable manifests)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return json.dumps(list(obj), allow_nan=False)
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def load(source):
    """A Program from a directory, a manifest path, a captured Graph or a Program."""
    from tracecap.graph import Graph
    if isinstance(source, Program):
        return source
    if isinstance(source, Graph):
        from tracecap.quant.facts import read_graph
        return read_graph(source)
    path = Path(os.fspath(source))
    manifest_path = path / MANIFEST if path.is_dir() else path
    if not manifest_path.is_file():
        raise QuantError(f"{path}: no quantized program here (expected a directory with {MANIFEST} and {ARRAYS}, "
                         f"as tracecap.quant.export writes)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantError(f"{manifest_path}: not a readable manifest ({exc})") from None
    _check(manifest, manifest_path)
    arrays_path = manifest_path.parent / manifest.get("arrays_file", ARRAYS)
    if Path(manifest.get("arrays_file", ARRAYS)).name != manifest.get("arrays_file", ARRAYS):
        raise QuantError(f"{manifest_path}: arrays_file must be a file name beside the manifest")
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise QuantError(f"{arrays_path}: the arrays file the manifest names is missing") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise QuantError(f"{arrays_path}: damaged arrays file ({exc})") from None
    program = Program(manifest, arrays, source=str(manifest_path))
    _check_arrays(program)
    return program


def _check(manifest, where):
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise QuantError(f"{where}: not a tracecap quantized manifest (format is not {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise QuantError(f"{where}: manifest version {manifest.get('version')!r}; this tracecap reads version {VERSION}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise QuantError(f"{where}: manifest lacks {', '.join(missing)}")
    from tracecap.quant.kernels import KERNELS
    for i, op in enumerate(manifest["ops"]):
        if not isinstance(op, dict) or op.get("kind") not in KERNELS:
            raise QuantError(f"{where}: op #{i} has unknown kind {op.get('kind') if isinstance(op, dict) else op!r}")
        for name in list(op.get("inputs", [])) + list(op.get("outputs", [])):
            if name not in manifest["tensors"]:
                raise QuantError(f"{where}: op {op.get('name')!r} names tensor {name!r}, which the manifest "
                                 f"does not describe")


def _check_arrays(program):
    for op in program.ops:
        for key in _array_keys(op):
            if key not in program.arrays:
                raise QuantError(f"{program.source}: op {op['name']!r} needs array {key!r}, missing from the arrays file")


def _array_keys(op):
    keys = []
    w = op.get("weight")
    if w:
        keys += [w["array"], w["scale"], w["zero_point"]]
    b = op.get("bias")
    if b:
        keys += [v for k, v in b.items() if k in ("array", "int32", "int32_scale")]
    keys += list((op.get("requantize") or {}).values())
    return keys


def reencode(source, out_dir, int8_as):
    """Rewrite a program with its int8 weights stored as ``int8_as`` ('int8' or 'uint8'); lossless."""
    if int8_as not in ("int8", "uint8"):
        raise QuantError(f"int8_as must be 'int8' or 'uint8', got {int8_as!r}")
    program = load(source)
    arrays = dict(program.arrays)
    manifest = json.loads(json.dumps(program.manifest))
    for op in manifest["ops"]:
        w = op.get("weight")
        if not w or w["dtype"] != "qint8" or w.get("stored_as") == int8_as:
            continue
        values = program.integers(dict(w, layout=None))            # PyTorch values, file order kept
        arrays[w["array"]] = encode(values, "qint8", int8_as)
        zps = program.zero_points(w)
        arrays[w["zero_point"]] = zps + (INT8_OFFSET if int8_as == "uint8" else 0)
        if "zero_point_value" in w:
            w["zero_point_value"] = int(arrays[w["zero_point"]][0])
        w["stored_as"] = int8_as
    manifest["int8_stored_as"] = int8_as
    return write(Program(manifest, arrays), out_dir)
