"""One small mapper per op: canonical torch op -> Caffe layer(s).

Each function is registered for the op names it serves and returns a list of
``netspec.Layer``. Where PyTorch and Caffe semantics differ (pooling rounding,
AVE divisor, broadcasting) the mapper either emits an exact construction or
raises ``Unsupported`` with the reason - never an approximate layer.
"""
from __future__ import annotations

import math
import operator
from functools import reduce

import numpy as np

from tracecap.graph import Blob
from tracecap.mappers.caffe.registry import Unsupported, norm_axis, pair, register


# ---------------------------------------------------------------------------- helpers
def _conv_spatial(params):
    """Convolution spatial fields: repeated kernel_size/stride/pad, or the _h/_w forms."""
    out = {}
    for key, field, default in (("kernel", "kernel_size", None), ("stride", "stride", 1), ("pad", "pad", 0)):
        h, w = params[key]
        if h == w:
            if h != default or key == "kernel":
                out[field] = [h]
        else:
            out[f"{key}_h"], out[f"{key}_w"] = h, w
    return out


def _group_dilation(groups, dil):
    """Convolution/Deconvolution `group` and `dilation` fields, omitted at their defaults."""
    out = {}
    if groups != 1:
        out["group"] = groups
    if dil != (1, 1):
        out["dilation"] = [dil[0]] if dil[0] == dil[1] else list(dil)
    return out


def _weight_and_bias(ctx, weight, bias):
    return [weight] + ([ctx.array(bias)] if bias is not None else [])


def _pool_spatial(kernel, stride, pad):
    out = {}
    for key, (h, w) in (("kernel", kernel), ("stride", stride), ("pad", pad)):
        field = "kernel_size" if key == "kernel" else key
        if h == w:
            out[field] = h
        else:
            out[f"{key}_h"], out[f"{key}_w"] = h, w
    return out


def _reshape(ctx, bottom, shape, top=None, name=None):
    top = top or ctx.tmp("reshape")
    return ctx.layer("Reshape", [bottom], [top], name=name or top, params={"shape": {"dim": [int(d) for d in shape]}})


def _prod(xs):
    return reduce(operator.mul, xs, 1)


def _scalar(v):
    """A Python number or a one-element constant as float; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, Blob) and v.is_constant and v.value is not None and v.value.numel() == 1:
        return float(v.value.reshape(()).item())
    return None


def _is_act(v):
    return isinstance(v, Blob) and not v.is_constant


# ---------------------------------------------------------------------------- convolution, linear
def _foldable_pad(blob):
    """(pad input, (top, left)) when ``blob`` is a symmetric zero pad read only by convolutions."""
    node = blob.producer if isinstance(blob, Blob) else None
    if node is None or node.op != "pad":
        return None
    p = node.params
    pads = tuple(p["pad"])
    if p["mode"] != "constant" or (p["value"] or 0) != 0 or len(pads) != 4 or min(pads) < 0:
        return None
    left, right, top, bottom = pads
    if left != right or top != bottom or blob in node.graph.outputs:
        return None
    if not all(u.op == "conv2d" and u.params["input"] is blob for u in blob.users):
        return None
    return p["input"], (top, left)


@register("pad")
def pad(node, ctx):
    if _foldable_pad(node.tops[0]) is not None:
        return []  # each reading Convolution pads by itself
    ctx.unsupported(f"pad {tuple(node.params['pad'])} ({node.params['mode']}): Caffe has no padding layer; "
                    f"only a symmetric zero pad read by convolutions is folded into them")


@register("conv2d")
def conv2d(node, ctx):
    p = node.params
    weight = ctx.array(p["weight"])
    if weight.ndim != 4:
        ctx.unsupported(f"weight of shape {weight.shape} is not 4-D")
    kh, kw = weight.shape[2:]
    dil = pair(p["dilation"], "dilation")
    padding = p["padding"]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same": symmetric only when the dilated kernel is odd
            eff = ((kh - 1) * dil[0], (kw - 1) * dil[1])
            if eff[0] % 2 or eff[1] % 2:
                ctx.unsupported("padding='same' with an even kernel pads asymmetrically; Caffe pads symmetrically")
            padding = (eff[0] // 2, eff[1] // 2)
    groups = int(p["groups"])
    padding = pair(padding, "padding")
    source = p["input"]
    folded = _foldable_pad(source)
    if folded is not None:  # ZeroPad2d / F.pad before the convolution: one Convolution with more padding
        source, (pt, pl) = folded
        padding = (padding[0] + pt, padding[1] + pl)
    params = {"num_output": weight.shape[0], "bias_term": p["bias"] is not None,
              **_conv_spatial({"kernel": (kh, kw), "stride": pair(p["stride"], "stride"), "pad": padding})}
    params.update(_group_dilation(groups, dil))
    blobs = _weight_and_bias(ctx, weight, p["bias"])
    return [ctx.layer("Convolution", [ctx.blob(source)], params=params, blobs=blobs)]


@register("conv_transpose2d")
def conv_transpose2d(node, ctx):
    """Deconvolution; output_padding = the full (pad 0) output cropped to PyTorch's window by Slices."""
    p = node.params
    weight = ctx.array(p["weight"])  # (in, out/groups, kh, kw) - the same layout Caffe's Deconvolution uses
    groups = int(p["groups"])
    dil = pair(p["dilation"], "dilation")
    pad, extra = pair(p["padding"], "padding"), pair(p["output_padding"], "output_padding")
    if any(e > q for e, q in zip(extra, pad)):
        ctx.unsupported(f"output_padding {extra} larger than padding {pad}: the extra rows lie outside "
                        f"what Caffe's Deconvolution computes")
    cropped = extra != (0, 0)
    params = {"num_output": weight.shape[1] * groups, "bias_term": p["bias"] is not None,
              **_conv_spatial({"kernel": tuple(weight.shape[2:]), "stride": pair(p["stride"], "stride"),
                               "pad": (0, 0) if cropped else pad})}
    params.update(_group_dilation(groups, dil))
    blobs = _weight_and_bias(ctx, weight, p["bias"])
    if not cropped:
        return [ctx.layer("Deconvolution", [ctx.blob(p["input"])], params=params, blobs=blobs)]
    n, c, h, w = ctx.in_shape()
    stride = pair(p["stride"], "stride")
    full = tuple((size - 1) * st + d * (k - 1) + 1 for size, st, d, k in zip((h, w), stride, dil, weight.shape[2:]))
    oh, ow = ctx.out_shape()[2:]
    deconv = ctx.tmp("full")
    layers = [ctx.layer("Deconvolution", [ctx.blob(p["input"])], [deconv], params=params, blobs=blobs)]
    cuts = [(2, pad[0], pad[0] + oh), (3, pad[1], pad[1] + ow)]
    return layers + _crop(ctx, deconv, (n, c) + full, cuts, ctx.top)


@register("linear")
def linear(node, ctx):
    p = node.params
    weight = ctx.array(p["weight"])
    ndim = len(ctx.in_shape())
    params = {"num_output": weight.shape[0], "bias_term": p["bias"] is not None}
    if ndim != 2:
        params["axis"] = ndim - 1  # nn.Linear acts on the last dimension
    blobs = _weight_and_bias(ctx, weight, p["bias"])
    return [ctx.layer("InnerProduct", [ctx.blob(p["input"])], params=params, blobs=blobs)]


@register("matmul", "mm")
def matmul(node, ctx):
    """x @ W with a constant 2-D W (custom layers of old code: torch.mm(x, self.weight)): InnerProduct."""
    a, b = node.params["input"], node.params["other"]
    if not (isinstance(b, Blob) and b.is_constant and b.value.dim() == 2) or not _is_act(a):
        ctx.unsupported("matmul of two activations (or with a constant on the left) has no Caffe layer")
    weight = ctx.array(b).T.copy()  # (K, N) -> InnerProduct's (N, K)
    ndim = len(ctx.in_shape())
    params = {"num_output": weight.shape[0], "bias_term": False}
    if ndim != 2:
        params["axis"] = ndim - 1
    return [ctx.layer("InnerProduct", [ctx.blob(a)], params=params, blobs=[weight])]


@register("batch_norm")
def batch_norm(node, ctx):
    p = node.params
    if p["training"]:
        ctx.unsupported("batch_norm in training mode normalises with batch statistics; call model.eval()")
    if p["running_mean"] is None or p["running_var"] is None:
        ctx.unsupported("batch_norm without running statistics (track_running_stats=False)")
    mean, var = ctx.array(p["running_mean"]), ctx.array(p["running_var"])
    bottom = ctx.blob(p["input"])
    affine = p["weight"] is not None or p["bias"] is not None
    bn_top = ctx.tmp("bn") if affine else ctx.top
    layers = [ctx.layer("BatchNorm", [bottom], [bn_top], params={"use_global_stats": True, "eps": float(p["eps"])},
                        blobs=[mean, var, np.ones(1, np.float32)])]
    if affine:
        c = mean.shape[0]
        gamma = ctx.array(p["weight"]) if p["weight"] is not None else np.ones(c, np.float32)
        beta = ctx.array(p["bias"]) if p["bias"] is not None else np.zeros(c, np.float32)
        layers.append(ctx.layer("Scale", [bn_top], params={"bias_term": True}, blobs=[gamma, beta]))
    return layers


# ---------------------------------------------------------------------------- activations
@register("relu")
def relu(node, ctx):
    return [ctx.layer("ReLU", [ctx.blob(node.params["input"])])]


@register("leaky_relu")
def leaky_relu(node, ctx):
    slope = float(node.params["negative_slope"])
    return [ctx.layer("ReLU", [ctx.blob(node.params["input"])], params={"negative_slope": slope})]


def _clip(ctx, bottom, lo, hi, top=None):
    """clamp(x, lo, hi). [0, 6] is ReLU6 (Clip(0, 6) in bvlc), [0, inf) ReLU; other ranges are built
    from ReLU/ReLU6 between Power layers - the same layers in both dialects, which share no Clip."""
    def relu6_layer(src, top):
        if ctx.has_layer("ReLU6"):
            return ctx.layer("ReLU6", [src], [top])
        return ctx.layer("Clip", [src], [top], params={"min": 0.0, "max": 6.0})
    top = top or ctx.top
    if lo == 0.0 and hi == 6.0:
        return [relu6_layer(bottom, top)]
    if lo == 0.0 and hi == math.inf:
        return [ctx.layer("ReLU", [bottom], [top])]
    if lo > hi:
        ctx.unsupported(f"clamp with min {lo} > max {hi}")
    shifted, clipped = ctx.tmp("shift"), ctx.tmp("clip")
    if math.isinf(lo) and math.isinf(hi):
        ctx.unsupported("clamp without bounds")
    if math.isinf(hi):      # lo + relu(x - lo)
        return [_power(ctx, bottom, shift=-lo, top=shifted), ctx.layer("ReLU", [shifted], [clipped]),
                _power(ctx, clipped, shift=lo, top=top)]
    if math.isinf(lo):      # hi - relu(hi - x)
        return [_power(ctx, bottom, scale=-1.0, shift=hi, top=shifted), ctx.layer("ReLU", [shifted], [clipped]),
                _power(ctx, clipped, scale=-1.0, shift=hi, top=top)]
    k = 6.0 / (hi - lo)     # lo + relu6((x - lo) * k) / k
    return [_power(ctx, bottom, scale=k, shift=-lo * k, top=shifted), relu6_layer(shifted, clipped),
            _power(ctx, clipped, scale=1.0 / k, shift=lo, top=top)]


@register("hardsigmoid")
def hardsigmoid(node, ctx):
    """relu6(x + 3) / 6: runtimes' HardSigmoid layers default to other slopes (OpenCV: 0.2)."""
    x, shifted, clipped = ctx.blob(node.params["input"]), ctx.tmp("shift"), ctx.tmp("relu6")
    return ([_power(ctx, x, shift=3.0, top=shifted)] + _clip(ctx, shifted, 0.0, 6.0, top=clipped)
            + [_power(ctx, clipped, scale=1.0 / 6.0)])


@register("relu6")
def relu6(node, ctx):
    return _clip(ctx, ctx.blob(node.params["input"]), 0.0, 6.0)


@register("hardtanh")
def hardtanh(node, ctx):
    return _clip(ctx, ctx.blob(node.params["input"]), float(node.params["min_val"]), float(node.params["max_val"]))


@register("clamp")
def clamp(node, ctx):
    lo, hi = node.params["min"], node.params["max"]
    if isinstance(lo, Blob) or isinstance(hi, Blob):
        ctx.unsupported("clamp with tensor bounds")
    return _clip(ctx, ctx.blob(node.params["input"]), -math.inf if lo is None else float(lo),
                 math.inf if hi is None else float(hi))


@register("elu")
def elu(node, ctx):
    return [ctx.layer("ELU", [ctx.blob(node.params["input"])], params={"alpha": float(node.params["alpha"])})]


@register("prelu")
def prelu(node, ctx):
    weight = ctx.array(node.params["weight"]).reshape(-1)
    if weight.size == 1:
        # A shared slope is written per channel: Caffe wants a channel_shared slope as a 0-d blob,
        # which OpenCV cannot read, and refuses shape (1,). Repeating it is exact in both.
        weight = np.repeat(weight, ctx.in_shape()[1] if len(ctx.in_shape()) > 1 else 1)
    return [ctx.layer("PReLU", [ctx.blob(node.params["input"])], blobs=[weight])]


@register("sigmoid")
def sigmoid(node, ctx):
    return [ctx.layer("Sigmoid", [ctx.blob(node.params["input"])])]


@register("tanh")
def tanh(node, ctx):
    return [ctx.layer("TanH", [ctx.blob(node.params["input"])])]


@register("silu")
def silu(node, ctx):
    """x * sigmoid(x): exact in every dialect, unlike Swish which only some have."""
    x = ctx.blob(node.params["input"])
    s = ctx.tmp("sigmoid")
    return [ctx.layer("Sigmoid", [x], [s]),
            ctx.layer("Eltwise", [x, s], params={"operation": "PROD"})]


@register("hardswish")
def hardswish(node, ctx):
    if not ctx.has_layer("HardSwish"):
        ctx.unsupported(f"the {ctx.dialect} dialect has no HardSwish layer")
    return [ctx.layer("HardSwish", [ctx.blob(node.params["input"])])]


@register("softmax", "log_softmax")
def softmax(node, ctx):
    ndim = len(ctx.in_shape())
    axis = norm_axis(node.params["dim"], ndim)
    x = ctx.blob(node.params["input"])
    if node.op == "softmax":
        return [ctx.layer("Softmax", [x], params={"axis": axis})]
    s = ctx.tmp("softmax")
    return [ctx.layer("Softmax", [x], [s], params={"axis": axis}), ctx.layer("Log", [s])]


# ---------------------------------------------------------------------------- pooling
def _round_mode(ctx, ceil):
    if ctx.dialect == "bvlc":
        return {"round_mode": "CEIL" if ceil else "FLOOR"}
    return {"ceil_mode": bool(ceil)}


def _caffe_pool_size(size, k, s, p, ceil):
    n = size + 2 * p - k
    out = (-(-n // s) if ceil else n // s) + 1
    if p and (out - 1) * s >= size + p:  # Caffe: the last window must start inside the image
        out -= 1
    return out


def _pool(ctx, method, kernel, stride, pad, ceil):
    in_shape = ctx.in_shape()
    if len(in_shape) != 4:
        ctx.unsupported(f"pooling on a {len(in_shape)}-D tensor; Caffe pools N×C×H×W")
    want = ctx.out_shape()[2:]
    got = tuple(_caffe_pool_size(in_shape[2 + i], kernel[i], stride[i], pad[i], ceil) for i in range(2))
    if got != want:  # rounding may flip the mode that reproduces PyTorch's size
        alt = tuple(_caffe_pool_size(in_shape[2 + i], kernel[i], stride[i], pad[i], not ceil) for i in range(2))
        if alt != want:
            ctx.unsupported(f"Caffe pooling gives {got} (or {alt}), PyTorch {want}")
        ceil = not ceil
    params = {"pool": method, **_pool_spatial(kernel, stride, pad), **_round_mode(ctx, ceil)}
    return [ctx.layer("Pooling", [ctx.blob(ctx.node.params["input"])], params=params)]


@register("max_pool2d")
def max_pool2d(node, ctx):
    p = node.params
    if p["return_indices"]:
        ctx.unsupported("max_pool2d(return_indices=True)")
    if pair(p["dilation"], "dilation") != (1, 1):
        ctx.unsupported("dilated max pooling")
    kernel = pair(p["kernel_size"], "kernel_size")
    stride = pair(p["stride"] if p["stride"] not in (None, (), []) else kernel, "stride")
    return _pool(ctx, "MAX", kernel, stride, pair(p["padding"], "padding"), p["ceil_mode"])


@register("avg_pool2d")
def avg_pool2d(node, ctx):
    p = node.params
    kernel = pair(p["kernel_size"], "kernel_size")
    stride = pair(p["stride"] if p["stride"] not in (None, (), []) else kernel, "stride")
    pad = pair(p["padding"], "padding")
    if p.get("divisor_override"):
        ctx.unsupported("avg_pool2d(divisor_override=...)")
    if pad != (0, 0) and not p["count_include_pad"]:
        ctx.unsupported("avg_pool2d(count_include_pad=False) with padding: Caffe's AVE pooling counts the padding")
    return _pool(ctx, "AVE", kernel, stride, pad, p["ceil_mode"])


@register("adaptive_avg_pool2d", "adaptive_max_pool2d")
def adaptive_pool2d(node, ctx):
    method = "AVE" if node.op == "adaptive_avg_pool2d" else "MAX"
    if node.params.get("return_indices"):
        ctx.unsupported("adaptive_max_pool2d(return_indices=True)")
    n, c, h, w = ctx.in_shape()
    oh, ow = ctx.out_shape()[2:]
    x = ctx.blob(node.params["input"])
    if (oh, ow) == (1, 1):
        return [ctx.layer("Pooling", [x], params={"pool": method, "global_pooling": True})]
    if h % oh or w % ow:
        ctx.unsupported(f"adaptive pooling {h}x{w} -> {oh}x{ow}: only exact divisions map to a fixed Caffe window")
    k = (h // oh, w // ow)
    return [ctx.layer("Pooling", [x], params={"pool": method, **_pool_spatial(k, k, (0, 0)),
                                             **_round_mode(ctx, False)})]


@register("mean")
def mean(node, ctx):
    """Means over trailing spatial dims as AVE pooling (exact), then a Reshape if keepdim=False."""
    p = node.params
    shape = ctx.in_shape()
    ndim = len(shape)
    dims = p["dim"]
    if dims is None or p.get("dtype") is not None:
        ctx.unsupported("mean over all elements or with dtype=")
    dims = sorted({norm_axis(d, ndim) for d in (dims if isinstance(dims, (list, tuple)) else [dims])})
    if ndim == 4 and set(dims) <= {2, 3}:
        x4, shape4, layers = ctx.blob(p["input"]), shape, []
    elif ndim == 3 and dims == [2]:
        shape4 = shape + (1,)
        x4 = ctx.tmp("as4d")
        layers = [_reshape(ctx, ctx.blob(p["input"]), shape4, top=x4)]
    else:
        ctx.unsupported(f"mean over dims {dims} of a {ndim}-D tensor (only spatial dims map to Caffe pooling)")
    kernel = (shape[2] if 2 in dims else 1, shape[3] if 3 in dims else 1) if ndim == 4 else (shape4[2], 1)
    pooled_shape = (shape4[0], shape4[1], shape4[2] // kernel[0], shape4[3] // kernel[1])
    out = ctx.out_shape()
    pooled = ctx.top if pooled_shape == out else ctx.tmp("pool")
    params = {"pool": "AVE", **_pool_spatial(kernel, (1, 1), (0, 0)), **_round_mode(ctx, False)}
    if kernel == tuple(shape4[2:]):
        params = {"pool": "AVE", "global_pooling": True}
    layers.append(ctx.layer("Pooling", [x4], [pooled], params=params))
    if pooled != ctx.top:
        layers.append(_reshape(ctx, pooled, out, top=ctx.top))
    return layers


# ---------------------------------------------------------------------------- elementwise arithmetic
def _broadcast_span(big, small, keep_batch):
    """Axis range where ``small`` (aligned right to ``big``) differs from 1, if it matches ``big`` there.

    Caffe's Scale/Bias apply a blob of shape big[axis:axis+k]; broadcasting inside that span is not possible.
    """
    small = (1,) * (len(big) - len(small)) + tuple(small)
    idx = [i for i, d in enumerate(small) if d != 1]
    if not idx:
        return None
    a, b = (0 if keep_batch else idx[0]), idx[-1]
    if tuple(small[a:b + 1]) != tuple(big[a:b + 1]):
        raise Unsupported(f"broadcasting {tuple(small)} against {tuple(big)} inside the span "
                          f"{a}..{b} has no Caffe Scale/Bias equivalent")
    return a, tuple(big[a:b + 1])


def _power(ctx, bottom, power=1.0, scale=1.0, shift=0.0, top=None):
    params = {}
    if power != 1.0:
        params["power"] = power
    if scale != 1.0:
        params["scale"] = scale
    if shift != 0.0:
        params["shift"] = shift
    return ctx.layer("Power", [bottom], [top or ctx.top], params=params)


def _with_tensor(ctx, kind, x, other, top=None):
    """x (activation) combined with a broadcast tensor ``other`` (kind 'mul' or 'add').

    Constants become Scale blobs (an add is Scale with ones and a bias: 1*x + b is exact).
    Activations: mul is a two-bottom Scale; add of an N×C×1×1 operand spreads it over H×W with a
    ones Deconvolution (exact) and adds with Eltwise - OpenCV has no Bias layer.
    """
    top = top or ctx.top
    big = ctx.shape(x)
    if other.is_constant:
        span = _broadcast_span(big, other.shape, keep_batch=False)
        value = ctx.array(other)
        if span is None:
            return [_power(ctx, ctx.blob(x), **({"scale": float(value.reshape(-1)[0])} if kind == "mul"
                                                else {"shift": float(value.reshape(-1)[0])}), top=top)]
        axis, dims = span
        params = {"axis": axis, "num_axes": len(dims), "bias_term": kind == "add"}
        blobs = [value.reshape(dims)] if kind == "mul" else [np.ones(dims, np.float32), value.reshape(dims)]
        return [ctx.layer("Scale", [ctx.blob(x)], [top], params=params, blobs=blobs)]
    if ctx.shape(other) == big:
        op = "PROD" if kind == "mul" else "SUM"
        return [ctx.layer("Eltwise", [ctx.blob(x), ctx.blob(other)], [top], params={"operation": op})]
    axis, dims = _broadcast_span(big, other.shape, keep_batch=True)
    if kind == "add":
        small = (1,) * (len(big) - len(other.shape)) + tuple(other.shape)
        if len(big) != 4 or small[2:] != (1, 1) or small[:2] != big[:2]:
            raise Unsupported(f"adding {tuple(other.shape)} to {big}: only N×C×1×1 operands broadcast exactly")
        n, c, h, w = big
        spread = ctx.tmp("spread")
        layers = []
        operand = ctx.blob(other)
        if tuple(other.shape) != small:
            operand = ctx.tmp("as4d")
            layers.append(_reshape(ctx, ctx.blob(other), small, top=operand))
        params = {"num_output": c, "bias_term": False, "kernel_h": h, "kernel_w": w, "group": c}
        layers.append(ctx.layer("Deconvolution", [operand], [spread], params=params,
                                blobs=[np.ones((c, 1, h, w), np.float32)]))
        layers.append(ctx.layer("Eltwise", [ctx.blob(x), spread], [top], params={"operation": "SUM"}))
        return layers
    layers = []
    operand = ctx.blob(other)
    if tuple(other.shape) != dims:
        operand = ctx.tmp("broadcast")
        layers.append(_reshape(ctx, ctx.blob(other), dims, top=operand))
    params = {"axis": axis, "num_axes": len(dims), "bias_term": False}
    layers.append(ctx.layer("Scale", [ctx.blob(x), operand], [top], params=params))
    return layers


def _big_first(ctx, a, b):
    """Order operands so the first is an activation with the output's shape."""
    out = ctx.out_shape()
    if _is_act(a) and tuple(a.shape) == out:
        return a, b
    if _is_act(b) and tuple(b.shape) == out:
        return b, a
    raise Unsupported(f"neither operand has the output shape {out} (both broadcast)")


@register("add", "sub")
def add_sub(node, ctx):
    p = node.params
    a, b = p["input"], p["other"]
    alpha = float(p.get("alpha", 1) or 1)
    sign = -1.0 if node.op == "sub" else 1.0
    s = _scalar(b)
    if s is not None and _is_act(a):
        return [_power(ctx, ctx.blob(a), shift=sign * alpha * s)]
    if _is_act(a) and _is_act(b) and tuple(a.shape) == tuple(b.shape):
        coeff = sign * alpha
        params = {"operation": "SUM"}
        if coeff != 1.0:
            params["coeff"] = [1.0, coeff]
        return [ctx.layer("Eltwise", [ctx.blob(a), ctx.blob(b)], params=params)]
    if sign * alpha != 1.0:
        ctx.unsupported(f"{node.op} with alpha={alpha} of broadcast operands")
    x, other = _big_first(ctx, a, b)
    return _with_tensor(ctx, "add", x, other)


@register("rsub")
def rsub(node, ctx):
    """other - alpha * input."""
    p = node.params
    alpha = float(p.get("alpha", 1) or 1)
    s = _scalar(p["other"])
    if s is not None:
        return [_power(ctx, ctx.blob(p["input"]), scale=-alpha, shift=s)]
    if _is_act(p["other"]) and tuple(p["other"].shape) == tuple(p["input"].shape):
        return [ctx.layer("Eltwise", [ctx.blob(p["input"]), ctx.blob(p["other"])],
                          params={"operation": "SUM", "coeff": [-alpha, 1.0]})]
    ctx.unsupported("reversed subtraction of a broadcast tensor")


@register("mul")
def mul(node, ctx):
    a, b = node.params["input"], node.params["other"]
    s = _scalar(b) if _is_act(a) else _scalar(a)
    if s is not None:
        return [_power(ctx, ctx.blob(a if _is_act(a) else b), scale=s)]
    x, other = _big_first(ctx, a, b)
    return _with_tensor(ctx, "mul", x, other)


@register("div")
def div(node, ctx):
    p = node.params
    if p.get("rounding_mode") is not None:
        ctx.unsupported(f"div(rounding_mode={p['rounding_mode']!r})")
    a, b = p["input"], p["other"]
    s = _scalar(b)
    if s is not None and _is_act(a):
        return [_power(ctx, ctx.blob(a), scale=1.0 / s)]
    sa = _scalar(a)
    if sa is not None and _is_act(b):  # s / x == (x / s) ** -1, one layer (OpenCV mis-fuses Power(-1) + Power)
        return [_power(ctx, ctx.blob(b), power=-1.0, scale=1.0 / sa)]
    if _is_act(a) and isinstance(b, Blob) and b.is_constant:
        recip = Blob(b.name, "const", b.shape, b.dtype, value=1.0 / b.value.float())
        return _with_tensor(ctx, "mul", a, recip)
    if _is_act(a) and _is_act(b) and tuple(b.shape) == ctx.out_shape():
        inv = ctx.tmp("reciprocal")
        if tuple(a.shape) != tuple(b.shape):
            ctx.unsupported("division of a broadcast numerator by a tensor")
        return [_power(ctx, ctx.blob(b), power=-1.0, top=inv),
                ctx.layer("Eltwise", [ctx.blob(a), inv], params={"operation": "PROD"})]
    if _is_act(a) and _is_act(b):
        inv = ctx.tmp("reciprocal")
        inv_blob = Blob(inv, "activation", b.shape)
        layers = [_power(ctx, ctx.blob(b), power=-1.0, top=inv)]
        return layers + _with_tensor(ctx, "mul", a, inv_blob)
    ctx.unsupported("division of these operands")


@register("maximum")
def maximum(node, ctx):
    a, b = node.params["input"], node.params["other"]
    if not (_is_act(a) and _is_act(b) and tuple(a.shape) == tuple(b.shape)):
        ctx.unsupported("maximum of broadcast or constant operands")
    return [ctx.layer("Eltwise", [ctx.blob(a), ctx.blob(b)], params={"operation": "MAX"})]


@register("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")
def dropout(node, ctx):
    """Eval-mode dropout never reaches the mapper (passes remove it); training-mode dropout is random."""
    ctx.unsupported("dropout with training=True is random at inference; call model.eval() (or pass "
                    "training=self.training) before capturing")


@register("cat")
def cat(node, ctx):
    tensors = node.params["tensors"]
    axis = norm_axis(node.params["dim"], len(ctx.out_shape()))
    return [ctx.layer("Concat", [ctx.blob(t) for t in tensors], params={"axis": axis})]


# ---------------------------------------------------------------------------- shape ops
@register("view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
def reshape(node, ctx):
    src, out = ctx.in_shape(), ctx.out_shape()
    x = ctx.blob(node.params["input"])
    for axis in range(1, len(src)):  # flatten everything from `axis` on: Caffe's Flatten
        if out == src[:axis] + (_prod(src[axis:]),):
            return [ctx.layer("Flatten", [x], params={"axis": axis} if axis != 1 else {})]
    return [_reshape(ctx, x, out, top=ctx.top)]


def _permute(ctx, bottom, order, top=None):
    if not ctx.has_layer("Permute"):
        ctx.unsupported(f"the {ctx.dialect} dialect has no Permute layer")
    return ctx.layer("Permute", [bottom], [top or ctx.top], params={"order": [int(o) for o in order]})


@register("permute")
def permute(node, ctx):
    ndim = len(ctx.in_shape())
    order = [norm_axis(d, ndim) for d in node.params["dims"]]
    return [_permute(ctx, ctx.blob(node.params["input"]), order)]


@register("transpose", "t")
def transpose(node, ctx):
    ndim = len(ctx.in_shape())
    if node.op == "t":
        d0, d1 = 0, ndim - 1
    else:
        d0, d1 = norm_axis(node.params["dim0"], ndim), norm_axis(node.params["dim1"], ndim)
    order = list(range(ndim))
    order[d0], order[d1] = order[d1], order[d0]
    return [_permute(ctx, ctx.blob(node.params["input"]), order)]


@register("pixel_shuffle")
def pixel_shuffle(node, ctx):
    n, c, h, w = ctx.in_shape()
    r = int(node.params["upscale_factor"])
    a, b = ctx.tmp("split"), ctx.tmp("permute")
    return [_reshape(ctx, ctx.blob(node.params["input"]), (n, c // (r * r), r, r, h, w), top=a),
            _permute(ctx, a, (0, 1, 4, 2, 5, 3), top=b),
            _reshape(ctx, b, (n, c // (r * r), h * r, w * r), top=ctx.top)]


def _slice(ctx, bottom, axis, size, start, stop, keep_top, silence):
    """Keep [start, stop) of ``axis``; the other pieces go to a Silence layer."""
    points = [pt for pt in (start, stop) if 0 < pt < size]
    if not points:
        return [], bottom
    tops, kept = [], None
    bounds = [0] + points + [size]
    for lo, hi in zip(bounds, bounds[1:]):
        if lo == start and hi == stop:
            kept = keep_top
            tops.append(keep_top)
        else:
            tops.append(ctx.tmp("unused"))
            silence.append(tops[-1])
    layer = ctx.layer("Slice", [bottom], tops, name=ctx.tmp("slice") if keep_top != ctx.top else ctx.top,
                      params={"axis": axis, "slice_point": points})
    return [layer], kept


def _crop(ctx, bottom, shape, cuts, top):
    """Keep [start, stop) on each (axis, start, stop) by chained Slices; the last writes ``top``."""
    cuts = [(ax, lo, hi) for ax, lo, hi in cuts if (lo, hi) != (0, shape[ax])]
    if not cuts:
        raise Unsupported("internal: empty crop")
    layers, silence, cur = [], [], bottom
    for n, (ax, lo, hi) in enumerate(cuts):
        new, cur = _slice(ctx, cur, ax, shape[ax], lo, hi, top if n == len(cuts) - 1 else ctx.tmp("part"), silence)
        layers += new
    return layers + _silence(ctx, silence)


def _silence(ctx, blobs):
    if not blobs:
        return []
    if not ctx.has_layer("Silence"):
        ctx.unsupported(f"the {ctx.dialect} dialect has no Silence layer for the unused slices")
    return [ctx.layer("Silence", blobs, [], name=ctx.tmp("silence"))]


@register("getitem")
def getitem(node, ctx):
    shape = ctx.in_shape()
    index = node.params["index"]
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, Blob) or (not isinstance(i, (int, slice)) and i is not Ellipsis and i is not None)
           for i in index):
        ctx.unsupported("indexing with tensors, lists or booleans (only slices, ints, None and ...)")
    if index.count(Ellipsis) > 1:
        ctx.unsupported("more than one Ellipsis")
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    if Ellipsis in index:
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(shape) - used) + index[k + 1:]
    cuts = []  # (axis, start, stop)
    axis = 0
    for i in index:
        if i is None:
            continue
        size = shape[axis]
        if isinstance(i, int):
            start = i + size if i < 0 else i
            cuts.append((axis, start, start + 1))
        else:
            start, stop, step = i.indices(size)
            if step != 1:
                ctx.unsupported(f"slicing with step {step}")
            if (start, stop) != (0, size):
                cuts.append((axis, start, stop))
        axis += 1
    if not any(isinstance(i, int) or i is None for i in index) and cuts:
        return _crop(ctx, ctx.blob(node.params["input"]), shape, cuts, ctx.top)
    part = ctx.tmp("part")
    layers = _crop(ctx, ctx.blob(node.params["input"]), shape, cuts, part) if cuts else []
    source = part if cuts else ctx.blob(node.params["input"])
    return layers + [_reshape(ctx, source, ctx.out_shape(), top=ctx.top)]


@register("chunk", "split")
def split(node, ctx):
    shape = ctx.in_shape()
    axis = norm_axis(node.params["dim"], len(shape))
    sizes = [t.shape[axis] for t in node.tops]
    points = list(np.cumsum(sizes)[:-1].astype(int))
    tops = [t.name for t in node.tops]
    unused = [t.name for t in node.tops if not t.users and t not in node.graph.outputs]
    return [ctx.layer("Slice", [ctx.blob(node.params["input"])], tops, name=node.name,
                      params={"axis": axis, "slice_point": points})] + _silence(ctx, unused)


# ---------------------------------------------------------------------------- resampling
@register("interpolate")
def interpolate(node, ctx):
    p = node.params
    n, c, h, w = ctx.in_shape()
    oh, ow = ctx.out_shape()[2:]
    if p["mode"] != "nearest":
        ctx.unsupported(f"interpolate(mode={p['mode']!r}): only nearest upsampling by an integer factor "
                        f"maps exactly to Caffe")
    if oh % h or ow % w or oh // h != ow // w:
        ctx.unsupported(f"nearest resize {h}x{w} -> {oh}x{ow} is not one integer factor")
    s = oh // h
    # nearest x s == a depthwise Deconvolution with an s×s kernel of ones and stride s
    weight = np.ones((c, 1, s, s), np.float32)
    params = {"num_output": c, "bias_term": False, "kernel_size": [s], "stride": [s], "group": c}
    return [ctx.layer("Deconvolution", [ctx.blob(p["input"])], params=params, blobs=[weight])]
