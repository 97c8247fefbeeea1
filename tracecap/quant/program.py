"""A quantized program: the manifest (plain JSON data) and its arrays, as one object.

``facts.read_graph`` makes one from a captured graph, ``manifest.load`` from files; ``execute``
runs one. The manifest says everything in words and numbers; the arrays hold what is too long
for JSON (weights, per-channel scales, biases, multipliers), under keys that say what they are:

    ops/<op>.weight                  integer weights (int8, or uint8 = int8 + 128 on request)
    ops/<op>.weight.scale            per-tensor or per-channel weight scale(s)  (float64, as PyTorch keeps them)
    ops/<op>.weight.zero_point       weight zero point(s)
    ops/<op>.bias                    float32 bias, as PyTorch keeps it
    ops/<op>.bias.int32              the bias as int32 at scale s_in * s_w
    ops/<op>.bias.int32.scale        that scale (float64)
    ops/<op>.requantize.multiplier   float32 s_in * s_w / s_out, exactly as the engine computes it
    ops/<op>.requantize.multiplier_int32, .right_shift   the same as fixed point (M0 * 2**-shift)
    activations/<tensor>.scale, .zero_point              every quantized activation's parameters
"""
from __future__ import annotations

import numpy as np

from tracecap.quant import layout as layouts
from tracecap.quant.errors import QuantError

FORMAT = "tracecap-quant"
VERSION = 1
INT8_OFFSET = 128


class Program:
    """``manifest`` (dict) + ``arrays`` (name -> np.ndarray); array reads undo the file encoding."""

    def __init__(self, manifest, arrays, source="<memory>"):
        self.manifest = manifest
        self.arrays = arrays
        self.source = source

    # ---- structure -------------------------------------------------------------------------
    @property
    def ops(self):
        return self.manifest["ops"]

    @property
    def tensors(self):
        return self.manifest["tensors"]

    @property
    def inputs(self):
        return self.manifest["inputs"]

    @property
    def outputs(self):
        return self.manifest["outputs"]

    @property
    def rules(self):
        return self.manifest["arithmetic"]

    def tensor(self, name):
        try:
            return self.tensors[name]
        except KeyError:
            raise QuantError(f"{self.source}: the manifest names tensor {name!r} but does not describe it") from None

    # ---- arrays, decoded -------------------------------------------------------------------
    def raw(self, key):
        try:
            return self.arrays[key]
        except KeyError:
            raise QuantError(f"{self.source}: array {key!r} is missing from the arrays file") from None

    def integers(self, entry):
        """An integer array described by ``entry`` ({"array", "dtype", "stored_as", "layout"}), in
        PyTorch's own values (int8 for qint8) and logical order."""
        a = self.raw(entry["array"]).astype(np.int64)
        if entry.get("stored_as") != _storage_of(entry["dtype"]):
            a = a + _offset(entry["dtype"], entry.get("stored_as"))
        if entry.get("layout") and a.ndim >= 3:
            a = layouts.from_layout(a, entry["layout"], weight=True)
        return a

    def zero_points(self, entry):
        """Weight zero point(s) in PyTorch's values (int8 domain for qint8)."""
        zp = np.asarray(self.raw(entry["zero_point"]), dtype=np.int64)
        if entry.get("stored_as") != _storage_of(entry["dtype"]):
            zp = zp + _offset(entry["dtype"], entry.get("stored_as"))
        return zp

    def floats(self, key):
        return None if key is None else np.asarray(self.raw(key))


def _storage_of(dtype):
    return {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}.get(dtype, dtype)


def _offset(dtype, stored_as):
    """What to add to stored values to get PyTorch's: uint8-stored qint8 -> -128, int8-stored quint8 -> +128."""
    if (dtype, stored_as) == ("qint8", "uint8"):
        return -INT8_OFFSET
    if (dtype, stored_as) == ("quint8", "int8"):
        return INT8_OFFSET
    raise QuantError(f"cannot read {dtype} values stored as {stored_as!r}")


def encode(values, dtype, stored_as):
    """PyTorch integer values -> the file's encoding (uint8 = int8 + 128 and back)."""
    values = np.asarray(values, dtype=np.int64)
    natural = _storage_of(dtype)
    if stored_as == natural:
        return values.astype(natural)
    return (values - _offset(dtype, stored_as)).astype(stored_as)
