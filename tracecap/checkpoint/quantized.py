"""Quantized tensors and modules in checkpoints: what they hold, read as data only.

Three things need help beyond the generic reader:

* quantized tensors themselves (``_rebuild_qtensor``: qint8/quint8 with per-tensor or
  per-channel scales and zero points) - ``describe`` states dtype, scheme, scale(s), zero
  point(s), axis and the memory layout from the strides (quantized conv weights are stored
  channels-last: shape [32, 3, 3, 3] with strides [27, 1, 9, 3] is OHWI);
* quantized conv modules pickle a 15-field tuple instead of a ``__dict__`` (their
  ``__getstate__``: in/out channels, kernel, stride, padding, dilation, transposed,
  output_padding, groups, padding_mode, weight, bias, scale, zero_point, training), in
  ``torch.save(model)`` files and TorchScript archives alike - ``conv_state_as_module``
  turns it into the module dict the module tree understands, with PyTorch's own state-dict
  names (weight, bias, scale, zero_point);
* packed-parameter objects (``torch.ScriptObject`` / ``__torch__.torch.classes.quantized.*``)
  pickle a tuple of tensors - ``tuple_state`` exposes it so the tensors inside get listed.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from tracecap.quant.layout import layout_name

from .placeholders import Opaque

CONV_FIELDS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
               "output_padding", "groups", "padding_mode", "weight", "bias", "scale", "zero_point", "training")
_CONV_MODULES = ("torch.ao.nn.quantized.modules.conv.", "torch.nn.quantized.modules.conv.",
                 "torch.ao.nn.intrinsic.quantized.modules.conv_relu.", "torch.nn.intrinsic.quantized.modules.conv_relu.",
                 "torch.ao.nn.intrinsic.quantized.modules.conv_add.")


def _plain_path(class_path: str) -> str:
    """``__torch__.torch.ao...Conv2d`` (TorchScript) and mangled names ``___torch_mangle_1`` -> the Python path."""
    path = class_path[len("__torch__."):] if class_path.startswith("__torch__.") else class_path
    return ".".join(p for p in path.split(".") if not p.startswith("___torch_mangle_"))


def is_quantized_conv_state(class_path: str, state) -> bool:
    path = _plain_path(class_path)
    return (type(state) is tuple and len(state) == len(CONV_FIELDS) and path.startswith(_CONV_MODULES)
            and isinstance(state[10], torch.Tensor) and state[10].is_quantized)


def conv_state_as_module(state) -> dict:
    """The module ``__dict__`` a quantized conv's tuple state stands for (weights under state-dict names)."""
    fields = dict(zip(CONV_FIELDS, state))
    buffers = OrderedDict(weight=fields["weight"], bias=fields["bias"])
    if isinstance(fields["scale"], (int, float)):
        buffers["scale"] = torch.tensor(float(fields["scale"]))
    if isinstance(fields["zero_point"], int):
        buffers["zero_point"] = torch.tensor(fields["zero_point"])
    attrs = {k: v for k, v in fields.items() if k not in ("weight", "bias")}
    return {**attrs, "_parameters": OrderedDict(), "_buffers": buffers, "_modules": OrderedDict()}


def tuple_state(obj) -> tuple | None:
    """The tuple an Opaque (packed parameters and the like) was pickled with, or None."""
    if not isinstance(obj, Opaque):
        return None
    state = obj.__dict__.get("state")
    if type(state) is tuple and not (len(state) == 2 and (state[0] is None or isinstance(state[0], dict))):
        return state
    return None


def packed_tensors(module_node, prefix=""):
    """(state-dict style name, tensor) of the packed parameters inside a module tree, which its
    ``state_dict()`` does not list (``fc._packed_params._packed_params[0]`` is the int8 weight)."""
    out = []
    for path, node in module_node.named_modules():
        for attr, value in node.attributes().items():
            packed = tuple_state(value)
            if packed is None or not isinstance(attr, str):
                continue
            base = f"{prefix}{path + '.' if path else ''}{attr}"
            out.extend((f"{base}[{i}]", t) for i, t in enumerate(_flat_tensors(packed)))
    return out


def _flat_tensors(value, depth=0):
    """The tensors of a packed state in order: torch.save keeps ``((weight, bias), class name)``,
    TorchScript ``(weight, bias)``; both list as [0] = weight, [1] = bias, as in the state dict."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)) and depth < 4:
        return [t for v in value for t in _flat_tensors(v, depth + 1)]
    return []


def describe(t: torch.Tensor) -> dict | None:
    """Quantization facts of a quantized tensor (None for any other tensor)."""
    if not isinstance(t, torch.Tensor) or not t.is_quantized:
        return None
    shape, stride = tuple(t.shape), tuple(t.stride())
    out = {"qscheme": str(t.qscheme()).replace("torch.", ""), "stride": list(stride),
           "layout": layout_name(shape, stride, weight=t.dtype is torch.qint8) if shape else None}
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams):
        out.update(axis=int(t.q_per_channel_axis()), scale=[float(v) for v in t.q_per_channel_scales()],
                   zero_point=[float(v) if t.qscheme() is torch.per_channel_affine_float_qparams else int(v)
                               for v in t.q_per_channel_zero_points()])
    else:
        out.update(scale=float(t.q_scale()), zero_point=int(t.q_zero_point()))
    ints = t.int_repr()
    if ints.numel():
        out["int_range"] = [int(ints.min()), int(ints.max())]
    return out


def format_rows(tensors) -> list:
    """Text lines of the quantization section of ``tracecap inspect``."""
    rows = [(t["name"], t["dtype"], q["qscheme"].replace("_affine", "").replace("per_", ""),
             _short(q["scale"]), _short(q["zero_point"]), "" if q.get("axis") is None else str(q["axis"]),
             q.get("layout") or "", "x".join(map(str, q["stride"])))
            for t in tensors if (q := t.get("quantization"))]
    if not rows:
        return []
    header = ("name", "dtype", "scheme", "scale", "zero_point", "axis", "layout", "stride")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["", "quantized tensors (real = (int - zero_point) * scale; full values with --json):",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return lines


def _short(v):
    if isinstance(v, list):
        shown = ", ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in v[:3])
        return f"[{shown}{', ...' if len(v) > 3 else ''}] ({len(v)})"
    return f"{v:.10g}" if isinstance(v, float) else str(v)
