"""Quantized models (torch.ao.quantization) as float Caffe nets: the model the integers stand for.

Caffe has no integer layers, so a quantized graph becomes the float net its integers encode:
weights dequantized exactly (``(q - zero_point) * scale``, per channel where PyTorch has it),
float biases as PyTorch keeps them, quantize/dequantize as identities (a ``Power`` layer, 1*x+0).
Activations are then *not* rounded to the quantization grid, so the result differs from
PyTorch's quantized output by the quantization error (measured in the tests); the integer truth
is ``tracecap.quant.execute``, and ``caffe.save`` writes the quantization table (every scale and
zero point, ``tracecap.quant.table``) next to the model for a runtime that quantizes itself.
"""
from __future__ import annotations

from tracecap.mappers.caffe.constructions import conv_spatial, group_dilation, power_layer
from tracecap.mappers.caffe.lazy_blob import LazyBlob
from tracecap.mappers.caffe.registry import norm_axis, pair, register, tensor_blob
from tracecap.quant.facts import unpack_conv, unpack_linear


@register("quantize_per_tensor", "dequantize")
def boundary(node, ctx):
    """The float <-> integer boundary: the identity on real values."""
    return [power_layer(ctx, ctx.bottom(node.params["input"]))]


def _float_weights(ctx, weight, bias):
    """The dequantized weight is made only while the caffemodel is written (a float copy of every weight
    otherwise lives from mapping to the end of the save)."""
    blobs = [LazyBlob(tuple(weight.shape), weight.dequantize)]
    if bias is not None:
        blobs.append(tensor_blob(bias))
    return blobs


def _with_relu(ctx, layer_type, bottom, params, blobs, relu):
    if not relu:
        return [ctx.layer(layer_type, [bottom], params=params, blobs=blobs)]
    pre = ctx.tmp(layer_type.lower())
    return [ctx.layer(layer_type, [bottom], [pre], params=params, blobs=blobs), ctx.layer("ReLU", [pre])]


@register("quantized::linear", "quantized::linear_relu", "quantized::linear_dynamic", "quantized::linear_relu_dynamic")
def linear(node, ctx):
    weight, bias = unpack_linear(node.params["packed_params"])
    ndim = len(ctx.in_shape())
    params = {"num_output": int(weight.shape[0]), "bias_term": bias is not None}
    if ndim != 2:
        params["axis"] = ndim - 1
    return _with_relu(ctx, "InnerProduct", ctx.bottom(node.params["input"]), params,
                      _float_weights(ctx, weight, bias), node.op.startswith("quantized::linear_relu"))


@register("quantized::conv2d", "quantized::conv2d_relu")
def conv2d(node, ctx):
    weight, bias, stride, padding, dilation, groups, transposed = unpack_conv(node.params["packed_params"])
    if transposed:
        ctx.unsupported("transposed quantized convolution")
    kh, kw = weight.shape[2:]
    params = {"num_output": int(weight.shape[0]), "bias_term": bias is not None,
              **conv_spatial({"kernel": (kh, kw), "stride": pair(stride, "stride"), "pad": pair(padding, "padding")})}
    params.update(group_dilation(groups, pair(dilation, "dilation")))
    return _with_relu(ctx, "Convolution", ctx.bottom(node.params["input"]), params,
                      _float_weights(ctx, weight, bias), node.op == "quantized::conv2d_relu")


@register("quantized::add", "quantized::add_relu", "quantized::mul", "quantized::mul_relu")
def binary(node, ctx):
    a, b = node.params["input"], node.params["other"]
    if tuple(ctx.shape(a)) != tuple(ctx.shape(b)):
        ctx.unsupported(f"quantized {node.op} with broadcasting")
    op = "SUM" if "add" in node.op else "PROD"
    relu = node.op.endswith("_relu")
    pre = ctx.tmp("eltwise") if relu else ctx.top
    layers = [ctx.layer("Eltwise", [ctx.bottom(a), ctx.bottom(b)], [pre], params={"operation": op})]
    return layers + ([ctx.layer("ReLU", [pre])] if relu else [])


@register("quantized::cat", "quantized::cat_relu")
def cat(node, ctx):
    axis = norm_axis(node.params["dim"], len(ctx.out_shape()))
    relu = node.op == "quantized::cat_relu"
    pre = ctx.tmp("concat") if relu else ctx.top
    layers = [ctx.layer("Concat", [ctx.bottom(t) for t in node.params["tensors"]], [pre], params={"axis": axis})]
    return layers + ([ctx.layer("ReLU", [pre])] if relu else [])
