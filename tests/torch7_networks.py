"""Torch7 networks for the tests, built as the Lua code of fb.resnet.torch-era models would save
them (``tests/torch7_fixtures`` writes the bytes), with a reference forward pass written from
Torch7's definitions directly in float64 torch.nn.functional calls - independent of
``tracecap.legacy.torch7_nn``.
"""
import math

import torch
import torch.nn.functional as F

import torch7_fixtures as fx

F32 = torch.float32


def _rand(gen, *shape, scale=1.0, low=None):
    t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
    if low is not None:
        t = t.abs() + low
    return t.to(F32)


def conv(gen, n_in, n_out, k, stride=1, pad=0, kind="nn.SpatialConvolution", bias=True):
    weight = _rand(gen, n_out, n_in, k, k, scale=math.sqrt(2.0 / (n_in * k * k)))
    stored = weight.reshape(n_out, n_in * k * k).clone() if kind == "nn.SpatialConvolutionMM" else weight
    fields = dict(nInputPlane=n_in, nOutputPlane=n_out, kW=k, kH=k, dW=stride, dH=stride, padW=pad, padH=pad,
                  weight=stored, gradWeight=torch.zeros(0), finput=torch.zeros(0), fgradInput=torch.zeros(0))
    if kind.startswith("cudnn."):
        fields["groups"] = 1
    if bias:
        fields["bias"] = _rand(gen, n_out, scale=0.1)
    m = fx.module(kind, **fields)
    m.ref = {"op": "conv", "weight": weight, "bias": fields.get("bias"), "stride": stride, "pad": pad}
    return m


def batchnorm(gen, n, kind="nn.SpatialBatchNormalization", old=False, eps=1e-5):
    mean, var = _rand(gen, n, scale=0.2), _rand(gen, n, scale=0.3, low=0.5)
    weight, bias = _rand(gen, n, scale=0.2, low=0.6), _rand(gen, n, scale=0.2)
    fields = dict(eps=eps, momentum=0.1, affine=True, weight=weight, bias=bias, running_mean=mean)
    if old:  # BN version 1 stored running_std = 1/sqrt(var + eps)
        fields["running_std"] = (1.0 / torch.sqrt(var.double() + eps)).to(F32)
        var = (fields["running_std"].double().pow(-2) - eps).to(F32)
    else:
        fields["running_var"] = var
    m = fx.Obj(kind, {**fx.module(kind).fields, **fields}, version=1 if old else 2)
    m.ref = {"op": "bn", "mean": mean, "var": var, "weight": weight, "bias": bias, "eps": eps}
    return m


def relu(kind="nn.ReLU"):
    m = fx.module(kind, inplace=True, threshold=0, val=0) if kind == "nn.ReLU" else fx.module(kind, inplace=True)
    m.ref = {"op": "relu"}
    return m


def seq(*mods):
    m = fx.module("nn.Sequential", modules=list(mods))
    m.ref = {"op": "seq"}
    return m


def residual(main, shortcut):
    table = fx.module("nn.ConcatTable", modules=[main, shortcut])
    table.ref = {"op": "table"}
    add = fx.module("nn.CAddTable", inplace=True)
    add.ref = {"op": "add"}
    return seq(table, add, relu("cudnn.ReLU"))


def identity():
    m = fx.module("nn.Identity")
    m.ref = {"op": "identity"}
    return m


def max_pool(k, s, pad, ceil=False, kind="nn.SpatialMaxPooling"):
    m = fx.module(kind, kW=k, kH=k, dW=s, dH=s, padW=pad, padH=pad, ceil_mode=ceil, indices=torch.zeros(0))
    m.ref = {"op": "max", "k": k, "s": s, "pad": pad, "ceil": ceil}
    return m


def avg_pool(k, s=1, pad=0):
    m = fx.module("nn.SpatialAveragePooling", kW=k, kH=k, dW=s, dH=s, padW=pad, padH=pad, ceil_mode=False,
                  count_include_pad=True, divide=True)
    m.ref = {"op": "avg", "k": k, "s": s, "pad": pad}
    return m


def view(n):
    m = fx.module("nn.View", size=fx.Storage([n], dtype=torch.int64), numElements=n, numInputDims=3)
    m.ref = {"op": "flatten"}
    return m


def linear(gen, n_in, n_out):
    m = fx.module("nn.Linear", weight=_rand(gen, n_out, n_in, scale=1 / math.sqrt(n_in)),
                  bias=_rand(gen, n_out, scale=0.1))
    m.ref = {"op": "linear", "weight": m.fields["weight"], "bias": m.fields["bias"]}
    return m


def dropout(p, v2=True):
    m = fx.module("nn.Dropout", p=p, v2=v2, noise=torch.zeros(0), inplace=False)
    m.ref = {"op": "scale", "factor": 1.0 if v2 else 1.0 - p}
    return m


def softmax():
    m = fx.module("nn.SoftMax")
    m.ref = {"op": "softmax"}
    return m


def resnet_style(seed=0, width=8, classes=10, size=224):
    """conv(MM)-BN-ReLU-maxpool(ceil), a basic residual block (cudnn conv/BN/ReLU, an old-format BN),
    a strided block with a 1x1 projection shortcut, global average pooling, View, Dropout, Linear,
    SoftMax: the shape of fb.resnet.torch's ImageNet ResNets, small."""
    g = torch.Generator().manual_seed(seed)
    w, w2 = width, 2 * width
    pooled = -(-(size - 1) // 2) + 1  # max pooling 3/2/1 in ceil mode
    final = (pooled - 1) // 2 + 1  # the strided block
    block1 = residual(seq(conv(g, w, w, 3, 1, 1, "cudnn.SpatialConvolution", bias=False),
                          batchnorm(g, w, "cudnn.SpatialBatchNormalization"), relu("cudnn.ReLU"),
                          conv(g, w, w, 3, 1, 1, bias=False), batchnorm(g, w, old=True)),
                      identity())
    block2 = residual(seq(conv(g, w, w2, 3, 2, 1, bias=False), batchnorm(g, w2), relu(),
                          conv(g, w2, w2, 3, 1, 1, "nn.SpatialConvolutionMM", bias=False), batchnorm(g, w2)),
                      seq(conv(g, w, w2, 1, 2, 0, bias=False), batchnorm(g, w2)))
    return seq(conv(g, 3, w, 3, 1, 1, "nn.SpatialConvolutionMM"), batchnorm(g, w), relu(),
               max_pool(3, 2, 1, ceil=True), block1, block2, avg_pool(final), view(w2), dropout(0.5),
               linear(g, w2, classes), softmax())


def reference(m, x):
    """What Torch7 computes in evaluation mode, from the definitions, in float64."""
    r = m.ref
    op = r["op"]
    if op == "seq":
        for child in m.fields["modules"]:
            x = reference(child, x)
        return x
    if op == "table":
        return [reference(child, x) for child in m.fields["modules"]]
    if op == "add":
        return sum(x[1:], x[0])
    if op == "identity":
        return x
    if op == "conv":
        b = None if r["bias"] is None else r["bias"].double()
        return F.conv2d(x, r["weight"].double(), b, r["stride"], r["pad"])
    if op == "bn":
        shape = (1, -1, 1, 1)
        inv = 1.0 / torch.sqrt(r["var"].double() + r["eps"])
        return ((x - r["mean"].double().view(shape)) * inv.view(shape) * r["weight"].double().view(shape)
                + r["bias"].double().view(shape))
    if op == "relu":
        return x.clamp(min=0)
    if op == "max":
        return F.max_pool2d(x, r["k"], r["s"], r["pad"], ceil_mode=r["ceil"])
    if op == "avg":
        return F.avg_pool2d(x, r["k"], r["s"], r["pad"])
    if op == "flatten":
        return x.reshape(x.shape[0], -1)
    if op == "scale":
        return x * r["factor"]
    if op == "linear":
        return x @ r["weight"].double().t() + r["bias"].double()
    if op == "softmax":
        e = torch.exp(x - x.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)
    raise ValueError(op)
