"""Argument signatures: bind a call's arguments to canonical parameter names.

Mappers and passes read ``node.params["stride"]`` instead of guessing positions,
whatever spelling the call used (positional, keyword, a Size for ``*size``). The
table is data: adding an op is one line here.
"""
from __future__ import annotations

import ast

import torch

# canonical name -> parameter list; "*name" collects the remaining positionals
# (a single tuple/list/Size argument is taken as the value itself).
_SIGNATURES = {
    "conv1d": "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1",
    "conv2d": "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1",
    "conv3d": "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1",
    "conv_transpose1d": "input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1",
    "conv_transpose2d": "input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1",
    "linear": "input, weight, bias=None",
    "batch_norm": "input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-05",
    "instance_norm": "input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True, momentum=0.1, eps=1e-05",
    "layer_norm": "input, normalized_shape, weight=None, bias=None, eps=1e-05",
    "group_norm": "input, num_groups, weight=None, bias=None, eps=1e-05",
    "local_response_norm": "input, size, alpha=0.0001, beta=0.75, k=1.0",
    "normalize": "input, p=2.0, dim=1, eps=1e-12, out=None",
    "relu": "input, inplace=False",
    "relu6": "input, inplace=False",
    "leaky_relu": "input, negative_slope=0.01, inplace=False",
    "hardtanh": "input, min_val=-1.0, max_val=1.0, inplace=False",
    "elu": "input, alpha=1.0, inplace=False",
    "selu": "input, inplace=False",
    "prelu": "input, weight",
    "sigmoid": "input",
    "tanh": "input",
    "hardsigmoid": "input, inplace=False",
    "hardswish": "input, inplace=False",
    "silu": "input, inplace=False",
    "mish": "input, inplace=False",
    "gelu": "input, approximate='none'",
    "softplus": "input, beta=1.0, threshold=20.0",
    "exp": "input",
    "log": "input",
    "log2": "input",
    "log10": "input",
    "sqrt": "input",
    "rsqrt": "input",
    "abs": "input",
    "neg": "input",
    "square": "input",
    "reciprocal": "input",
    "erf": "input",
    "log_sigmoid": "input",
    "threshold": "input, threshold, value, inplace=False",
    "softmax": "input, dim=None, _stacklevel=3, dtype=None",
    "log_softmax": "input, dim=None, _stacklevel=3, dtype=None",
    "max_pool1d": "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False",
    "max_pool2d": "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False",
    "avg_pool1d": "input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True",
    "avg_pool2d": "input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None",
    "avg_pool3d": "input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None",
    "max_pool3d": "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False",
    "adaptive_avg_pool1d": "input, output_size",
    "adaptive_avg_pool2d": "input, output_size",
    "adaptive_max_pool2d": "input, output_size, return_indices=False",
    "max_unpool2d": "input, indices, kernel_size, stride=None, padding=0, output_size=None",
    "dropout": "input, p=0.5, training=True, inplace=False",
    "dropout1d": "input, p=0.5, training=True, inplace=False",
    "dropout2d": "input, p=0.5, training=True, inplace=False",
    "dropout3d": "input, p=0.5, training=True, inplace=False",
    "alpha_dropout": "input, p=0.5, training=False, inplace=False",
    "feature_alpha_dropout": "input, p=0.5, training=False, inplace=False",
    "cat": "tensors, dim=0",
    "stack": "tensors, dim=0",
    "add": "input, other, alpha=1",
    "sub": "input, other, alpha=1",
    "rsub": "input, other, alpha=1",
    "mul": "input, other",
    "div": "input, other, rounding_mode=None",
    "pow": "input, exponent",
    "maximum": "input, other",
    "minimum": "input, other",
    "matmul": "input, other",
    "mm": "input, other",
    "bmm": "input, other",
    "view": "input, *size",
    "reshape": "input, *shape",
    "flatten": "input, start_dim=0, end_dim=-1",
    "unsqueeze": "input, dim",
    "squeeze": "input, dim=None",
    "permute": "input, *dims",
    "transpose": "input, dim0, dim1",
    "t": "input",
    "expand": "input, *size",
    "expand_as": "input, other",
    "view_as": "input, other",
    "reshape_as": "input, other",
    "repeat": "input, *sizes",
    "getitem": "input, index",
    "setitem": "input, index, value",
    "chunk": "input, chunks, dim=0",
    "split": "input, split_size_or_sections, dim=0",
    "narrow": "input, dim, start, length",
    "unbind": "input, dim=0",
    "mean": "input, dim=None, keepdim=False, dtype=None",
    "sum": "input, dim=None, keepdim=False, dtype=None",
    "amax": "input, dim=(), keepdim=False",
    "amin": "input, dim=(), keepdim=False",
    "logsumexp": "input, dim, keepdim=False",
    "max": "input, dim=None, keepdim=False",
    "min": "input, dim=None, keepdim=False",
    "interpolate": "input, size=None, scale_factor=None, mode='nearest', align_corners=None, "
                   "recompute_scale_factor=None, antialias=False",
    "pixel_shuffle": "input, upscale_factor",
    "pad": "input, pad, mode='constant', value=None",
    "clamp": "input, min=None, max=None",
    "contiguous": "input, memory_format=None",
    "clone": "input, memory_format=None",
    "detach": "input",
    "alias": "input",
    "float": "input, memory_format=None",
    "type_as": "input, other",
    # quantized tensors (torch.ao.quantization): the quantize/dequantize boundary and the
    # ``quantized::`` kernels; ``packed_params`` is the engine's packed-weight ScriptObject
    "quantize_per_tensor": "input, scale, zero_point, dtype",
    "quantize_per_channel": "input, scales, zero_points, axis, dtype",
    "dequantize": "input",
    "quantized::linear": "input, packed_params, scale, zero_point",
    "quantized::linear_relu": "input, packed_params, scale, zero_point",
    "quantized::linear_dynamic": "input, packed_params, reduce_range=False",
    "quantized::linear_relu_dynamic": "input, packed_params, reduce_range=False",
    "quantized::conv2d": "input, packed_params, scale, zero_point",
    "quantized::conv2d_relu": "input, packed_params, scale, zero_point",
    "quantized::add": "input, other, scale, zero_point",
    "quantized::add_relu": "input, other, scale, zero_point",
    "quantized::mul": "input, other, scale, zero_point",
    "quantized::mul_relu": "input, other, scale, zero_point",
    "quantized::cat": "tensors, dim, scale=None, zero_point=None",
    "quantized::cat_relu": "tensors, dim, scale=None, zero_point=None",
    "zeros_like": "input",
    "ones_like": "input",
    "full_like": "input, fill_value",
    "new_zeros": "input, *size",
    "new_ones": "input, *size",
    "new_full": "input, size, fill_value",
    "zero": "input",
    "fill": "input, value",
    "copy": "input, src, non_blocking=False",
    "index_select": "input, dim, index",
    "flip": "input, *dims",
    "fliplr": "input",
    "flipud": "input",
    "roll": "input, shifts, dims=None",
    "tile": "input, *dims",
    "select": "input, dim, index",
}

def _parse(sig):
    params = []
    for part in sig.split(", "):
        if part.startswith("*"):
            params.append((part[1:], "*", None))
        elif "=" in part:
            name, default = part.split("=", 1)
            params.append((name, "opt", ast.literal_eval(default)))
        else:
            params.append((part, "req", None))
    return tuple(params)


SIGNATURES = {name: _parse(sig) for name, sig in _SIGNATURES.items()}


class BindError(Exception):
    """Arguments do not fit the op's canonical signature."""


def bind(op, args, kwargs):
    """Bind a call's arguments to the canonical parameter names of ``op``.

    Returns an ordered dict of every parameter (defaults filled in). Unknown ops
    return ``{"args": args, "kwargs": kwargs}`` so nothing is lost.
    """
    sig = SIGNATURES.get(op)
    if sig is None:
        out = {"args": list(args)}
        if kwargs:
            out["kwargs"] = dict(kwargs)
        return out
    bound = {}
    pos = list(args)
    for name, kind, default in sig:
        if kind == "*":
            if pos:
                value = pos[0] if len(pos) == 1 and isinstance(pos[0], (tuple, list, torch.Size)) else tuple(pos)
                pos = []
            elif name in kwargs:
                value = kwargs[name]
            else:
                raise BindError(f"{op}: missing argument {name!r}")
            bound[name] = tuple(value)
        elif pos:
            bound[name] = pos.pop(0)
        elif name in kwargs:
            bound[name] = kwargs[name]
        elif kind == "opt":
            bound[name] = default
        else:
            raise BindError(f"{op}: missing argument {name!r}")
    if pos:
        raise BindError(f"{op}: {len(pos)} unexpected positional argument(s)")
    extra = set(kwargs) - set(bound)
    for name in extra:  # e.g. out=, dtype= on a method whose table entry lacks it
        bound[name] = kwargs[name]
    return bound


def normalize(op, swap, params, input_ndim=None):
    """Fix spellings that differ only in form: swapped operands, implicit softmax dim."""
    if swap and "other" in params:
        params["input"], params["other"] = params["other"], params["input"]
    elif swap and "exponent" in params:   # x.__rpow__(b) is b ** x
        params["input"], params["exponent"] = params["exponent"], params["input"]
    if op in ("softmax", "log_softmax") and params.get("dim") is None and input_ndim is not None:
        params["dim"] = 0 if input_ndim in (0, 1, 3) else 1  # torch's legacy implicit-dim rule
        params["implicit_dim"] = True
    return params
