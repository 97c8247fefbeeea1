"""Convolution, transposed convolution, and the linear layers (``linear``, ``matmul`` with a constant)."""
from __future__ import annotations

from tracecap.graph import Blob
from tracecap.mappers.caffe.constructions import conv_spatial, group_dilation, weight_and_bias, is_activation, crop
from tracecap.mappers.caffe.registry import pair, register


@register("conv2d")
def conv2d(node, ctx):
    p = node.params
    weight = ctx.weight(p["weight"])
    if len(ctx.in_shape()) != 4:
        ctx.unsupported(f"{node.op} of a {len(ctx.in_shape())}-D tensor; the Caffe layer takes N×C×H×W")
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
    params = {"num_output": weight.shape[0], "bias_term": p["bias"] is not None,
              **conv_spatial({"kernel": (kh, kw), "stride": pair(p["stride"], "stride"), "pad": padding})}
    params.update(group_dilation(groups, dil))
    blobs = weight_and_bias(ctx, weight, p["bias"])
    return [ctx.layer("Convolution", [ctx.bottom(source)], params=params, blobs=blobs)]


@register("conv_transpose2d")
def conv_transpose2d(node, ctx):
    """Deconvolution; output_padding = the full (pad 0) output cropped to PyTorch's window by Slices."""
    p = node.params
    if len(ctx.in_shape()) != 4:
        ctx.unsupported(f"{node.op} of a {len(ctx.in_shape())}-D tensor; the Caffe layer takes N×C×H×W")
    weight = ctx.weight(p["weight"])  # (in, out/groups, kh, kw) - the same layout Caffe's Deconvolution uses
    groups = int(p["groups"])
    dil = pair(p["dilation"], "dilation")
    pad, extra = pair(p["padding"], "padding"), pair(p["output_padding"], "output_padding")
    if any(e > q for e, q in zip(extra, pad)):
        ctx.unsupported(f"output_padding {extra} larger than padding {pad}: the extra rows lie outside "
                        f"what Caffe's Deconvolution computes")
    cropped = extra != (0, 0)
    params = {"num_output": weight.shape[1] * groups, "bias_term": p["bias"] is not None,
              **conv_spatial({"kernel": tuple(weight.shape[2:]), "stride": pair(p["stride"], "stride"),
                               "pad": (0, 0) if cropped else pad})}
    params.update(group_dilation(groups, dil))
    blobs = weight_and_bias(ctx, weight, p["bias"])
    if not cropped:
        return [ctx.layer("Deconvolution", [ctx.bottom(p["input"])], params=params, blobs=blobs)]
    n, c, h, w = ctx.in_shape()
    stride = pair(p["stride"], "stride")
    full = tuple((size - 1) * st + d * (k - 1) + 1 for size, st, d, k in zip((h, w), stride, dil, weight.shape[2:]))
    oh, ow = ctx.out_shape()[2:]
    deconv = ctx.tmp("full")
    layers = [ctx.layer("Deconvolution", [ctx.bottom(p["input"])], [deconv], params=params, blobs=blobs)]
    cuts = [(2, pad[0], pad[0] + oh), (3, pad[1], pad[1] + ow)]
    return layers + crop(ctx, deconv, (n, c) + full, cuts, ctx.top)


@register("linear")
def linear(node, ctx):
    p = node.params
    weight = ctx.weight(p["weight"])
    ndim = len(ctx.in_shape())
    params = {"num_output": weight.shape[0], "bias_term": p["bias"] is not None}
    if ndim != 2:
        params["axis"] = ndim - 1  # nn.Linear acts on the last dimension
    blobs = weight_and_bias(ctx, weight, p["bias"])
    return [ctx.layer("InnerProduct", [ctx.bottom(p["input"])], params=params, blobs=blobs)]


@register("matmul", "mm")
def matmul(node, ctx):
    """x @ W with a constant 2-D W (custom layers of old code: torch.mm(x, self.weight)): InnerProduct."""
    a, b = node.params["input"], node.params["other"]
    if not (isinstance(b, Blob) and b.is_constant and b.value.dim() == 2) or not is_activation(a):
        ctx.unsupported("matmul of two activations (or with a constant on the left) has no Caffe layer")
    weight = ctx.weight(b, transpose=True)  # (K, N) -> InnerProduct's (N, K), made while written
    ndim = len(ctx.in_shape())
    params = {"num_output": weight.shape[0], "bias_term": False}
    if ndim != 2:
        params["axis"] = ndim - 1
    return [ctx.layer("InnerProduct", [ctx.bottom(a)], params=params, blobs=[weight])]
