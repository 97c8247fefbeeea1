"""Torch7 ``nn``/``cudnn`` networks (read by ``tracecap.checkpoint.torch7``) as PyTorch modules.

``build_network(obj)`` turns a saved Torch7 module into an eval-mode ``nn.Module`` computing
what Torch7 computed in evaluation mode (``model:evaluate()``), in float32.  One builder per
Torch7 class reads the class's own fields, with the defaults and backward-compatibility rules
of the final torch/nn and cudnn.torch code (old ``padding`` and ``running_std`` fields, missing
``ceil_mode``/``padW``, ``Dropout`` before ``v2`` scaling at test time ...).  Classes without a
builder are all collected, with their place in the tree, into one ``RevivalError``.

The module tree keeps Torch7's 1-based positions as child names (``2.1.3`` is the third child
of the first child of the second), so converted layers are named after the Torch7 tree.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from tracecap.checkpoint.storages import StorageRef
from tracecap.checkpoint.torch7 import LuaTable, TorchObject

from tracecap.legacy_models import torch7_modules as t7

from .errors import RevivalError

MAX_DEPTH = 500
BUILDERS = {}


def builds(*typenames):
    def register(fn):
        for name in typenames:
            BUILDERS[name] = fn
        return fn
    return register


class Context:
    """Where a builder is in the tree, and what it could not build."""

    def __init__(self):
        self.unsupported = []  # (typename, path)
        self.depth = 0

    def child(self, obj, path):
        if not isinstance(obj, TorchObject):
            raise RevivalError(f"{path}: expected a Torch7 module, found {type(obj).__name__}")
        builder = BUILDERS.get(obj.typename)
        if builder is None:
            self.unsupported.append((obj.typename, path))
            return nn.Identity()
        if self.depth > MAX_DEPTH:
            raise RevivalError(f"{path}: modules nested more than {MAX_DEPTH} deep")
        self.depth += 1
        try:
            return builder(Fields(obj, path), self)
        finally:
            self.depth -= 1

    def children(self, f: "Fields"):
        mods = f.obj.get("modules")
        items = mods.as_list() if isinstance(mods, LuaTable) else ([] if mods is None else None)
        if items is None:
            raise RevivalError(f"{f.where}: {f.obj.typename}.modules is not a list of modules")
        prefix = "" if f.path == "(root)" else f.path + "."
        return OrderedDict((str(i), self.child(m, f"{prefix}{i}")) for i, m in enumerate(items, 1))


class Fields:
    """Typed access to a module's fields, with errors naming the module and the field."""

    def __init__(self, obj: TorchObject, path: str):
        self.obj, self.path = obj, path
        self.where = f"{obj.typename} at {path}"

    def has(self, name):
        return self.obj.get(name) is not None

    def number(self, name, default=None, kind=float):
        value = self.obj.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RevivalError(f"{self.where}: field {name!r} should be a number, found {value!r:.40}")
        if kind is int:
            if value != int(value):
                raise RevivalError(f"{self.where}: field {name!r} should be an integer, found {value!r}")
            return int(value)
        return float(value)

    def int(self, name, default=None):
        return self.number(name, default, int)

    def flag(self, name, default=False):
        value = self.obj.get(name)
        return default if value is None else bool(value)

    def tensor(self, name, required=True, numel=None):
        value = self.obj.get(name)
        if value is None or (isinstance(value, torch.Tensor) and value.numel() == 0 and not required):
            if required:
                raise RevivalError(f"{self.where}: field {name!r} is missing")
            return None
        if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
            raise RevivalError(f"{self.where}: field {name!r} should be a float tensor, found {value!r:.60}")
        if numel is not None and value.numel() != numel:
            raise RevivalError(f"{self.where}: {name} has {value.numel()} elements, expected {numel}")
        return value.detach().to(torch.float32).contiguous().clone()

    def sizes(self, name):
        value = self.obj.get(name)
        if isinstance(value, StorageRef):
            return [int(v) for v in value.tensor().tolist()]
        if isinstance(value, LuaTable) and value.as_list() is not None:
            return [int(v) for v in value.as_list()]
        if isinstance(value, torch.Tensor):
            return [int(v) for v in value.reshape(-1).tolist()]
        raise RevivalError(f"{self.where}: field {name!r} should be a list of sizes, found {value!r:.60}")


def _assign(param, value):
    with torch.no_grad():
        param.copy_(value.reshape(param.shape))


# -- containers --------------------------------------------------------------------------------
@builds("nn.Sequential")
def _sequential(f, ctx):
    return nn.Sequential(ctx.children(f))


@builds("nn.Concat", "nn.DepthConcat")
def _concat(f, ctx):
    return t7.Concat(ctx.children(f), f.int("dimension"), f.where,
                     depth=f.obj.typename == "nn.DepthConcat")


@builds("nn.ConcatTable")
def _concat_table(f, ctx):
    return t7.ConcatTable(ctx.children(f))


@builds("nn.ParallelTable")
def _parallel_table(f, ctx):
    return t7.ParallelTable(ctx.children(f))


@builds("nn.CAddTable")
def _cadd(f, ctx):
    return t7.CAddTable(f.flag("inplace"))


@builds("nn.CMulTable")
def _cmul(f, ctx):
    return t7.CMulTable()


@builds("nn.JoinTable")
def _join(f, ctx):
    return t7.JoinTable(f.int("dimension"), f.int("nInputDims") if f.has("nInputDims") else None)


@builds("nn.SelectTable")
def _select(f, ctx):
    return t7.SelectTable(f.int("index"))


@builds("nn.Identity", "nn.Copy")
def _identity(f, ctx):
    return nn.Identity()


# -- convolutions ------------------------------------------------------------------------------
def _padding(f):
    if f.has("padding"):  # before padW/padH existed
        pad = f.int("padding")
        return pad, pad
    return f.int("padH", 0), f.int("padW", 0)


@builds("nn.SpatialConvolution", "nn.SpatialConvolutionMM", "cudnn.SpatialConvolution",
        "nn.SpatialDilatedConvolution", "cudnn.SpatialDilatedConvolution")
def _conv(f, ctx):
    """Weights are (nOut, nIn/groups, kH, kW), or (nOut, nIn*kH*kW) for SpatialConvolutionMM and old
    SpatialConvolution files: the same numbers in the same order, so a reshape restores them."""
    n_in, n_out, groups = f.int("nInputPlane"), f.int("nOutputPlane"), f.int("groups", 1)
    kh, kw = f.int("kH"), f.int("kW")
    if groups < 1 or n_in % groups or n_out % groups:
        raise RevivalError(f"{f.where}: {n_in} -> {n_out} planes cannot form {groups} groups")
    weight = f.tensor("weight", numel=n_out * (n_in // groups) * kh * kw)
    bias = f.tensor("bias", required=False, numel=n_out)
    conv = nn.Conv2d(n_in, n_out, (kh, kw), (f.int("dH", 1), f.int("dW", 1)), _padding(f),
                     (f.int("dilationH", 1), f.int("dilationW", 1)), groups, bias=bias is not None)
    _assign(conv.weight, weight)
    if bias is not None:
        _assign(conv.bias, bias)
    return conv


@builds("nn.SpatialFullConvolution", "cudnn.SpatialFullConvolution")
def _deconv(f, ctx):
    """Transposed convolution; weight (nIn, nOut, kH, kW); adjW/adjH are PyTorch's output_padding."""
    if f.int("groups", 1) != 1:
        raise RevivalError(f"{f.where}: grouped transposed convolution is not supported")
    n_in, n_out, kh, kw = f.int("nInputPlane"), f.int("nOutputPlane"), f.int("kH"), f.int("kW")
    weight = f.tensor("weight", numel=n_in * n_out * kh * kw)
    bias = f.tensor("bias", required=False, numel=n_out)
    deconv = nn.ConvTranspose2d(n_in, n_out, (kh, kw), (f.int("dH", 1), f.int("dW", 1)), _padding(f),
                                (f.int("adjH", 0), f.int("adjW", 0)), bias=bias is not None)
    _assign(deconv.weight, weight)
    if bias is not None:
        _assign(deconv.bias, bias)
    return deconv


@builds("nn.Linear")
def _linear(f, ctx):
    weight = f.tensor("weight")
    if weight.dim() != 2:
        raise RevivalError(f"{f.where}: weight of shape {list(weight.shape)}, expected (outputSize, inputSize)")
    bias = f.tensor("bias", required=False, numel=weight.shape[0])
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    _assign(linear.weight, weight)
    if bias is not None:
        _assign(linear.bias, bias)
    return linear


# -- normalisation -----------------------------------------------------------------------------
@builds("nn.BatchNormalization", "nn.SpatialBatchNormalization",
        "cudnn.BatchNormalization", "cudnn.SpatialBatchNormalization")
def _batchnorm(f, ctx):
    """Eval-mode BN: (x - running_mean) / sqrt(running_var + eps) * weight + bias.  Files older than
    BN version 2 kept running_std = 1/sqrt(var + eps); Torch7's read() turns it into running_var."""
    eps = f.number("eps", 1e-5)
    mean = f.tensor("running_mean")
    if f.obj.version < 2 and f.has("running_std"):
        std = f.obj.get("running_std").detach().to(torch.float64)
        var = (std.pow(-2) - eps).to(torch.float32)
    else:
        var = f.tensor("running_var", numel=mean.numel())
    n = mean.numel()
    weight = f.tensor("weight", required=False, numel=n)
    bias = f.tensor("bias", required=False, numel=n)
    affine = weight is not None
    if affine != (bias is not None):
        raise RevivalError(f"{f.where}: has a weight but no bias (or the reverse)")
    cls = nn.BatchNorm2d if "Spatial" in f.obj.typename else nn.BatchNorm1d
    bn = cls(n, eps=eps, affine=affine)
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    if affine:
        _assign(bn.weight, weight)
        _assign(bn.bias, bias)
    return bn.eval()


@builds("nn.SpatialCrossMapLRN", "cudnn.SpatialCrossMapLRN")
def _lrn(f, ctx):
    size = f.int("size")
    if size % 2 == 0:
        raise RevivalError(f"{f.where}: an even LRN size ({size}) centres its window unlike PyTorch")
    return nn.LocalResponseNorm(size, f.number("alpha", 1e-4), f.number("beta", 0.75), f.number("k", 1.0))


# -- pooling -----------------------------------------------------------------------------------
def _pool_geometry(f):
    kh, kw = f.int("kH"), f.int("kW")
    return (kh, kw), (f.int("dH", kh), f.int("dW", kw)), (f.int("padH", 0), f.int("padW", 0))


@builds("nn.SpatialMaxPooling", "nn.SpatialDilatedMaxPooling", "cudnn.SpatialMaxPooling")
def _max_pool(f, ctx):
    kernel, stride, pad = _pool_geometry(f)
    flavor = f.obj.typename.split(".")[0]
    return t7.Pool2d("max", kernel, stride, pad, f.flag("ceil_mode"), flavor, f.where,
                     dilation=(f.int("dilationH", 1), f.int("dilationW", 1)))


@builds("nn.SpatialAveragePooling", "cudnn.SpatialAveragePooling")
def _avg_pool(f, ctx):
    kernel, stride, pad = _pool_geometry(f)
    if not f.has("ceil_mode"):  # backwardCompatible() of both SpatialAveragePooling.lua files
        pad = (0, 0)
    if f.obj.typename.startswith("cudnn."):
        if f.obj.get("divide") is False:
            raise RevivalError(f"{f.where}: divide=false is refused by cudnn.torch itself")
        return t7.Pool2d("avg", kernel, stride, pad, f.flag("ceil_mode"), "cudnn", f.where)
    return t7.Pool2d("avg", kernel, stride, pad, f.flag("ceil_mode"), "nn", f.where,
                     count_include_pad=f.flag("count_include_pad", True), sum_scale=not f.flag("divide"))


# -- element-wise ------------------------------------------------------------------------------
@builds("nn.ReLU", "nn.Threshold", "cudnn.ReLU")
def _threshold(f, ctx):
    inplace = f.flag("inplace")
    if f.obj.typename == "cudnn.ReLU":
        return nn.ReLU(inplace)
    th, val = f.number("threshold", 0.0), f.number("val", 0.0)
    if th == 0 and val == 0:
        return nn.ReLU(inplace)
    return t7.Threshold(th, val, inplace)


@builds("nn.ReLU6")
def _relu6(f, ctx):
    return nn.ReLU6(f.flag("inplace"))


@builds("cudnn.ClippedReLU")
def _clipped_relu(f, ctx):
    return nn.Hardtanh(0.0, f.number("ceiling"), f.flag("inplace"))


@builds("nn.HardTanh")
def _hardtanh(f, ctx):
    return nn.Hardtanh(f.number("min_val", -1.0), f.number("max_val", 1.0), f.flag("inplace"))


@builds("nn.LeakyReLU")
def _leaky(f, ctx):
    return nn.LeakyReLU(f.number("negval", 0.01), f.flag("inplace"))


@builds("nn.ELU")
def _elu(f, ctx):
    return nn.ELU(f.number("alpha", 1.0), f.flag("inplace"))


@builds("nn.PReLU")
def _prelu(f, ctx):
    weight = f.tensor("weight")
    prelu = nn.PReLU(weight.numel())
    _assign(prelu.weight, weight)
    return prelu


@builds("nn.Tanh", "nn.Sigmoid", "cudnn.Tanh", "cudnn.Sigmoid")
def _pointwise(f, ctx):
    name = "tanh" if f.obj.typename.endswith("Tanh") else "sigmoid"
    if f.flag("inplace"):
        return t7.Pointwise(name, True)
    return nn.Tanh() if name == "tanh" else nn.Sigmoid()


@builds("nn.SoftMax", "nn.LogSoftMax", "nn.SpatialSoftMax", "cudnn.SoftMax", "cudnn.LogSoftMax",
        "cudnn.SpatialSoftMax", "cudnn.SpatialLogSoftMax")
def _softmax(f, ctx):
    name = f.obj.typename
    over = "instance" if name in ("cudnn.SoftMax", "cudnn.LogSoftMax") else "feature"
    return t7.SoftMax("Log" in name, over, f.where)


@builds("nn.MulConstant")
def _mul_constant(f, ctx):
    return t7.Scale(f.number("constant_scalar"), inplace=f.flag("inplace"))


@builds("nn.AddConstant")
def _add_constant(f, ctx):
    return t7.Scale(f.number("constant_scalar"), add=True, inplace=f.flag("inplace"))


@builds("nn.Dropout", "cudnn.Dropout", "nn.SpatialDropout")
def _dropout(f, ctx):
    """Eval mode.  Dropout before ``v2`` (and SpatialDropout always) scaled by 1-p at test time."""
    if f.flag("stochastic_inference"):
        raise RevivalError(f"{f.where}: stochastic_inference drops units at test time (random)")
    p = f.number("p", 0.5)
    if p == 0 or (f.obj.typename != "nn.SpatialDropout" and f.flag("v2")):
        return nn.Identity()
    return t7.Scale(1.0 - p, inplace=f.flag("inplace"))


# -- shapes ------------------------------------------------------------------------------------
@builds("nn.View")
def _view(f, ctx):
    return t7.View(f.sizes("size"), f.int("numInputDims") if f.has("numInputDims") else None, f.where)


@builds("nn.Reshape")
def _reshape(f, ctx):
    mode = f.obj.get("batchMode")
    return t7.Reshape(f.sizes("size"), mode if isinstance(mode, bool) else None)


@builds("nn.SpatialZeroPadding")
def _zero_pad(f, ctx):
    return t7.ZeroPad(f.int("pad_l", 0), f.int("pad_r", 0), f.int("pad_t", 0), f.int("pad_b", 0))


def supported_classes():
    """The Torch7 classes ``build_network`` converts, sorted."""
    return sorted(BUILDERS)


def build_network(obj, source: str = "Torch7 file") -> nn.Module:
    """An eval-mode PyTorch module computing what the Torch7 module ``obj`` computes."""
    if not isinstance(obj, TorchObject):
        raise RevivalError(f"{source} holds a {type(obj).__name__}, not a Torch7 module")
    ctx = Context()
    body = ctx.child(obj, "(root)")
    if ctx.unsupported:
        listed = "; ".join(f"{name} at {path}" for name, path in ctx.unsupported)
        raise RevivalError(f"{source}: {len(ctx.unsupported)} Torch7 module(s) have no PyTorch equivalent in "
                           f"tracecap: {listed}. Supported: {', '.join(supported_classes())}")
    return t7.Revived(body, source).eval()
