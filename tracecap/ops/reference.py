"""Execute a Graph from its *canonical* op names and params only.

Unlike ``tracecap.replay``'s default (re-calling the recorded target), this looks at
nothing but ``node.op`` and ``node.params`` - exactly what the mappers see - and
computes each op with torch functional calls. The tests use it as an oracle (a graph
that replays here to the eager output has a complete, correct canonical form);
replay uses it for nodes a pass rewrote (``target`` None).
"""
import operator

import torch
import torch.nn.functional as F

from tracecap.graph import Blob, map_structure


def _dim_list(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _max_min(fn, p):
    """torch.max/min in their three forms: over a dim (values, indices), of two tensors, of everything."""
    if p["dim"] is None:
        return fn(p["input"])
    if isinstance(p["dim"], torch.Tensor):
        return fn(p["input"], p["dim"])
    return fn(p["input"], p["dim"], p["keepdim"])


def _quantized_kernel(qualified, names):
    """Call ``torch.ops.quantized.<op>`` with the canonical params ``names``, in that order."""
    namespace, op = qualified.split("::")

    def impl(p):
        args = [list(p[n]) if n == "tensors" else p[n] for n in names]
        return getattr(getattr(torch.ops, namespace), op)(*args)
    return impl


def _setitem(x, index, value):
    out = x.clone()
    out[index] = value
    return out


IMPL = {
    "conv1d": lambda p: F.conv1d(p["input"], p["weight"], p["bias"], p["stride"], p["padding"], p["dilation"], p["groups"]),
    "conv2d": lambda p: F.conv2d(p["input"], p["weight"], p["bias"], p["stride"], p["padding"], p["dilation"], p["groups"]),
    "conv_transpose2d": lambda p: F.conv_transpose2d(p["input"], p["weight"], p["bias"], p["stride"], p["padding"],
                                                     p["output_padding"], p["groups"], p["dilation"]),
    "linear": lambda p: F.linear(p["input"], p["weight"], p["bias"]),
    "batch_norm": lambda p: F.batch_norm(p["input"], p["running_mean"], p["running_var"], p["weight"], p["bias"],
                                         False, 0.0, p["eps"]),
    "layer_norm": lambda p: F.layer_norm(p["input"], p["normalized_shape"], p["weight"], p["bias"], p["eps"]),
    "instance_norm": lambda p: F.instance_norm(p["input"], p["running_mean"], p["running_var"], p["weight"],
                                               p["bias"], p["use_input_stats"], 0.0, p["eps"]),
    "group_norm": lambda p: F.group_norm(p["input"], p["num_groups"], p["weight"], p["bias"], p["eps"]),
    "local_response_norm": lambda p: F.local_response_norm(p["input"], p["size"], p["alpha"], p["beta"], p["k"]),
    "normalize": lambda p: F.normalize(p["input"], p["p"], p["dim"], p["eps"]),
    "relu": lambda p: F.relu(p["input"]),
    "relu6": lambda p: F.relu6(p["input"]),
    "leaky_relu": lambda p: F.leaky_relu(p["input"], p["negative_slope"]),
    "hardtanh": lambda p: F.hardtanh(p["input"], p["min_val"], p["max_val"]),
    "elu": lambda p: F.elu(p["input"], p["alpha"]),
    "prelu": lambda p: F.prelu(p["input"], p["weight"]),
    "sigmoid": lambda p: torch.sigmoid(p["input"]),
    "tanh": lambda p: torch.tanh(p["input"]),
    "hardsigmoid": lambda p: F.hardsigmoid(p["input"]),
    "hardswish": lambda p: F.hardswish(p["input"]),
    "silu": lambda p: F.silu(p["input"]),
    "gelu": lambda p: F.gelu(p["input"], approximate=p["approximate"]),
    "exp": lambda p: torch.exp(p["input"]),
    "log": lambda p: torch.log(p["input"]),
    "log2": lambda p: torch.log2(p["input"]),
    "log10": lambda p: torch.log10(p["input"]),
    "sqrt": lambda p: torch.sqrt(p["input"]),
    "abs": lambda p: torch.abs(p["input"]),
    "neg": lambda p: torch.neg(p["input"]),
    "rsqrt": lambda p: torch.rsqrt(p["input"]),
    "reciprocal": lambda p: torch.reciprocal(p["input"]),
    "square": lambda p: torch.square(p["input"]),
    "erf": lambda p: torch.erf(p["input"]),
    "softplus": lambda p: F.softplus(p["input"], p["beta"], p["threshold"]),
    "mish": lambda p: F.mish(p["input"]),
    "log_sigmoid": lambda p: F.logsigmoid(p["input"]),
    "threshold": lambda p: F.threshold(p["input"], p["threshold"], p["value"]),
    "softmax": lambda p: F.softmax(p["input"], p["dim"]),
    "log_softmax": lambda p: F.log_softmax(p["input"], p["dim"]),
    "max_pool2d": lambda p: F.max_pool2d(p["input"], p["kernel_size"], p["stride"], p["padding"], p["dilation"],
                                         p["ceil_mode"], p["return_indices"]),
    "max_unpool2d": lambda p: F.max_unpool2d(p["input"], p["indices"], p["kernel_size"], p["stride"], p["padding"],
                                             p["output_size"]),
    "avg_pool2d": lambda p: F.avg_pool2d(p["input"], p["kernel_size"], p["stride"], p["padding"], p["ceil_mode"],
                                         p["count_include_pad"], p["divisor_override"]),
    "avg_pool3d": lambda p: F.avg_pool3d(p["input"], p["kernel_size"], p["stride"], p["padding"], p["ceil_mode"],
                                         p["count_include_pad"], p["divisor_override"]),
    "max_pool3d": lambda p: F.max_pool3d(p["input"], p["kernel_size"], p["stride"], p["padding"], p["dilation"],
                                         p["ceil_mode"]),
    "adaptive_avg_pool2d": lambda p: F.adaptive_avg_pool2d(p["input"], p["output_size"]),
    "adaptive_max_pool2d": lambda p: F.adaptive_max_pool2d(p["input"], p["output_size"], p["return_indices"]),
    "dropout": lambda p: p["input"],
    "cat": lambda p: torch.cat(list(p["tensors"]), p["dim"]),
    "stack": lambda p: torch.stack(list(p["tensors"]), p["dim"]),
    "add": lambda p: torch.add(p["input"], p["other"], alpha=p["alpha"]),
    "sub": lambda p: torch.sub(p["input"], p["other"], alpha=p["alpha"]),
    "rsub": lambda p: torch.rsub(torch.as_tensor(p["input"]), p["other"], alpha=p["alpha"]),
    "mul": lambda p: torch.mul(torch.as_tensor(p["input"]), p["other"]),
    "div": lambda p: torch.div(torch.as_tensor(p["input"]), p["other"], rounding_mode=p["rounding_mode"]),
    "pow": lambda p: torch.pow(p["input"], p["exponent"]),
    "matmul": lambda p: torch.matmul(p["input"], p["other"]),
    "bmm": lambda p: torch.bmm(p["input"], p["other"]),
    "view": lambda p: p["input"].reshape(p["size"]),
    "reshape": lambda p: p["input"].reshape(p["shape"]),
    "flatten": lambda p: torch.flatten(p["input"], p["start_dim"], p["end_dim"]),
    "unsqueeze": lambda p: torch.unsqueeze(p["input"], p["dim"]),
    "squeeze": lambda p: p["input"].squeeze() if p["dim"] is None else p["input"].squeeze(p["dim"]),
    "permute": lambda p: p["input"].permute(p["dims"]),
    "transpose": lambda p: torch.transpose(p["input"], p["dim0"], p["dim1"]),
    "t": lambda p: p["input"].t(),
    "expand": lambda p: p["input"].expand(p["size"]),
    "repeat": lambda p: p["input"].repeat(p["sizes"]),
    "getitem": lambda p: operator.getitem(p["input"], p["index"]),
    "chunk": lambda p: torch.chunk(p["input"], p["chunks"], p["dim"]),
    "split": lambda p: torch.split(p["input"], p["split_size_or_sections"], p["dim"]),
    "mean": lambda p: torch.mean(p["input"], dim=_dim_list(p["dim"]), keepdim=p["keepdim"]) if p["dim"] is not None
    else torch.mean(p["input"]),
    "sum": lambda p: torch.sum(p["input"], dim=_dim_list(p["dim"]), keepdim=p["keepdim"]) if p["dim"] is not None
    else torch.sum(p["input"]),
    "max": lambda p: _max_min(torch.max, p),
    "min": lambda p: _max_min(torch.min, p),
    "amax": lambda p: torch.amax(p["input"], _dim_list(p["dim"]), p["keepdim"]),
    "amin": lambda p: torch.amin(p["input"], _dim_list(p["dim"]), p["keepdim"]),
    "logsumexp": lambda p: torch.logsumexp(p["input"], _dim_list(p["dim"]), p["keepdim"]),
    "interpolate": lambda p: F.interpolate(p["input"], p["size"], p["scale_factor"], p["mode"], p["align_corners"],
                                           p["recompute_scale_factor"], p["antialias"]),
    "pixel_shuffle": lambda p: F.pixel_shuffle(p["input"], p["upscale_factor"]),
    "pad": lambda p: F.pad(p["input"], p["pad"], p["mode"], p["value"]),
    "clamp": lambda p: torch.clamp(p["input"], p["min"], p["max"]),
    "quantize_per_tensor": lambda p: torch.quantize_per_tensor(p["input"], p["scale"], p["zero_point"], p["dtype"]),
    "quantize_per_channel": lambda p: torch.quantize_per_channel(p["input"], p["scales"], p["zero_points"],
                                                                 p["axis"], p["dtype"]),
    "dequantize": lambda p: p["input"].dequantize(),
    **{op: _quantized_kernel(op, ("input", "packed_params", "scale", "zero_point"))
       for op in ("quantized::linear", "quantized::linear_relu", "quantized::conv2d", "quantized::conv2d_relu")},
    **{op: _quantized_kernel(op, ("input", "packed_params", "reduce_range"))
       for op in ("quantized::linear_dynamic", "quantized::linear_relu_dynamic")},
    **{op: _quantized_kernel(op, ("input", "other", "scale", "zero_point"))
       for op in ("quantized::add", "quantized::add_relu", "quantized::mul", "quantized::mul_relu")},
    **{op: _quantized_kernel(op, ("tensors", "dim", "scale", "zero_point"))
       for op in ("quantized::cat", "quantized::cat_relu")},
    "setitem": lambda p: _setitem(p["input"], p["index"], p["value"]),
    "copy": lambda p: p["input"].clone().copy_(p["src"]),
    "minimum": lambda p: torch.minimum(p["input"], p["other"]),
    "maximum": lambda p: torch.maximum(p["input"], p["other"]),
    "expand_as": lambda p: p["input"].expand_as(p["other"]),
    "tile": lambda p: torch.tile(p["input"], p["dims"]),
    "index_select": lambda p: torch.index_select(p["input"], p["dim"], p["index"]),
    "flip": lambda p: torch.flip(p["input"], p["dims"]),
    "fliplr": lambda p: torch.fliplr(p["input"]),
    "flipud": lambda p: torch.flipud(p["input"]),
    "roll": lambda p: torch.roll(p["input"], p["shifts"], p["dims"]),
    "select": lambda p: torch.select(p["input"], p["dim"], p["index"]),
    "narrow": lambda p: torch.narrow(p["input"], p["dim"], p["start"], p["length"]),
}


def call(node, env):
    """The result of ``node`` computed from its op and params, Blobs read from ``env`` (name -> value)."""
    impl = IMPL.get(node.op)
    if impl is None:
        raise NotImplementedError(f"the reference executor has no {node.op!r} ({node.where()})")
    return impl(map_structure(node.params, lambda o: env[o.name] if isinstance(o, Blob) else o))


def run(graph, *inputs):
    """Run ``graph`` with every node computed by :func:`call`; returns the outputs."""
    from tracecap import replay
    return replay.run(graph, *inputs, call=call)
