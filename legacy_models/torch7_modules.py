"""PyTorch modules that compute what Torch7's ``nn``/``cudnn`` modules computed, conventions included.

(They live beside the zoo, not in ``tracecap/``, because they are model code: the recorder
skips ops called from tracecap's own files, so a revived network must run from here.)

Where a Torch7 module has a plain PyTorch twin (``SpatialConvolution`` -> ``nn.Conv2d``) the
builder in ``torch7_nn`` uses that; the modules here carry Torch7 rules PyTorch does not have:
1-based dimensions, ``View``'s batch-size inference, ``Reshape``'s batch guess, tables of
tensors (``ConcatTable`` returns a list, ``CAddTable`` sums one), each pooling flavour's own
output-size formula, and in-place updates Torch7 did (an in-place ``ReLU`` after an ``Identity``
branch changes what that branch returns, in Torch7 and here alike).  Anything Torch7 would
compute differently from the PyTorch call chosen is refused when the network runs, naming the
module, rather than approximated.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tracecap.legacy.errors import RevivalError


class Revived(nn.Module):
    """A revived network (Torch7 or whole-module checkpoint) as tracecap hands it out.  Torch7
    modules may update their input in place; the copy keeps the caller's tensor intact (capture
    drops ``clone``, so the converted model has no extra layer)."""

    def __init__(self, body: nn.Module, source: str):
        super().__init__()
        self.body = body
        self.source = source

    def forward(self, x):
        return self.body(x.clone())


class Branches(nn.Module):
    """A container whose children keep their Torch7 names (1, 2, ...), so layer names follow the tree."""

    def __init__(self, children):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    @property
    def branches(self):
        return list(self._modules.values())


class Concat(Branches):
    """nn.Concat / nn.DepthConcat: every child on the same input, outputs joined along ``dimension``
    (1-based, absolute: with a batch, 2 is channels)."""

    def __init__(self, children, dimension: int, where: str, depth: bool = False):
        super().__init__(children)
        self.dim = dimension - 1
        self.where = where
        self.depth = depth

    def forward(self, x):
        outs = [m(x) for m in self.branches]
        if self.depth:
            shapes = {tuple(o.shape[:self.dim]) + tuple(o.shape[self.dim + 1:]) for o in outs}
            if len(shapes) > 1:
                raise RevivalError(f"{self.where}: nn.DepthConcat joins outputs of different sizes "
                                   f"{[list(o.shape) for o in outs]} by zero-padding them; not supported")
        return torch.cat(outs, self.dim)


class ConcatTable(Branches):
    """nn.ConcatTable: every child on the same input; the outputs as a list (a Lua table)."""

    def forward(self, x):
        return [m(x) for m in self.branches]


class ParallelTable(Branches):
    """nn.ParallelTable: child i on input i."""

    def forward(self, xs):
        return [m(x) for m, x in zip(self.branches, xs)]


class CAddTable(nn.Module):
    """nn.CAddTable: the sum of a list; ``inplace`` accumulates into the first tensor, as Torch7 did."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.inplace = inplace

    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out.add_(x) if self.inplace else out + x
        return out


class CMulTable(nn.Module):
    """nn.CMulTable: the element-wise product of a list."""

    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class JoinTable(nn.Module):
    """nn.JoinTable(dimension, nInputDims): concatenation of a list; with ``nInputDims`` an input of
    one more dimension is a batch and the dimension shifts by one; negative counts from the end."""

    def __init__(self, dimension: int, n_input_dims):
        super().__init__()
        self.dimension = dimension
        self.n_input_dims = n_input_dims

    def forward(self, xs):
        dim = self.dimension
        if dim < 0:
            dim = xs[0].dim() + dim + 1
        elif self.n_input_dims is not None and xs[0].dim() == self.n_input_dims + 1:
            dim += 1
        return torch.cat(list(xs), dim - 1)


class SelectTable(nn.Module):
    """nn.SelectTable(index): one element of a list (1-based; negative counts from the end)."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, xs):
        i = self.index if self.index > 0 else len(xs) + self.index + 1
        return xs[i - 1]


class View(nn.Module):
    """nn.View(sizes) with ``numInputDims``: Torch7's batch-size inference (View.lua ``batchsize``)."""

    def __init__(self, sizes, num_input_dims, where: str):
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.num_input_dims = num_input_dims
        self.num_elements = math.prod(s for s in self.sizes if s >= 0)
        self.where = where

    def forward(self, x):
        ndim, shape = x.dim(), list(x.shape)
        maxdim = self.num_input_dims if self.num_input_dims is not None else ndim
        if maxdim > ndim or self.num_elements == 0:
            raise RevivalError(f"{self.where}: nn.View({self.sizes}) cannot view a {shape} input")
        inner = math.prod(shape[ndim - maxdim:])
        if inner % self.num_elements:
            raise RevivalError(f"{self.where}: input view {shape} and desired view {self.sizes} do not match")
        batch = 1 if -1 in self.sizes else inner // self.num_elements
        batch *= math.prod(shape[:ndim - maxdim])
        if batch == 1 and (self.num_input_dims is None or ndim <= self.num_input_dims):
            return x.reshape(self.sizes)
        return x.reshape([batch] + self.sizes)


class Reshape(nn.Module):
    """nn.Reshape(sizes, batchMode): without batchMode, an input with the target's element count
    is taken as one sample unless its first size is 1 (Reshape.lua)."""

    def __init__(self, sizes, batch_mode):
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.batch_mode = batch_mode
        self.nelement = math.prod(self.sizes)

    def forward(self, x):
        if self.batch_mode is False or (self.batch_mode is None and x.numel() == self.nelement
                                        and x.shape[0] != 1):
            return x.reshape(self.sizes)
        return x.reshape([x.shape[0]] + self.sizes)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def torch7_pool_size(n, k, d, pad, ceil, flavor, dilation=1):
    """Output length of Torch7 pooling: THNN's formula (nn) or cudnn.torch's (cudnn)."""
    span = dilation * (k - 1) + 1
    if flavor == "cudnn":  # math.ceil/floor((n + 2p - k) / d + 1), no adjustment
        return (_ceil_div(n + 2 * pad - k, d) if ceil else (n + 2 * pad - k) // d) + 1
    out = (_ceil_div(n - span + 2 * pad, d) if ceil else (n - span + 2 * pad) // d) + 1
    if pad and (out - 1) * d >= n + pad:  # THNN: the last window must start inside the image
        out -= 1
    return out


class Pool2d(nn.Module):
    """Spatial max/average pooling with Torch7's output size and averaging rules.

    ``sum_scale``: nn.SpatialAveragePooling saved without ``divide`` (or with false) sums the
    window (Torch7 multiplies its average by kW*kH).  cudnn average pooling always counts the
    padding, and windows reaching past the padded input are refused (cuDNN's divisor there is
    not THNN's).  The PyTorch call is used only when its output size equals Torch7's.
    """

    def __init__(self, kind, kernel, stride, padding, ceil, flavor, where, count_include_pad=True,
                 sum_scale=False, dilation=(1, 1)):
        super().__init__()
        self.kind, self.kernel, self.stride, self.padding = kind, kernel, stride, padding
        self.ceil, self.flavor, self.where = ceil, flavor, where
        self.count_include_pad, self.sum_scale, self.dilation = count_include_pad, sum_scale, dilation

    def forward(self, x):
        (kh, kw), (dh, dw), (ph, pw) = self.kernel, self.stride, self.padding
        h, w = x.shape[-2:]
        want = (torch7_pool_size(h, kh, dh, ph, self.ceil, self.flavor, self.dilation[0]),
                torch7_pool_size(w, kw, dw, pw, self.ceil, self.flavor, self.dilation[1]))
        if self.kind == "max":
            y = F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation, ceil_mode=self.ceil)
        else:
            if self.flavor == "cudnn" and ((want[0] - 1) * dh + kh > h + 2 * ph or (want[1] - 1) * dw + kw > w + 2 * pw):
                raise RevivalError(f"{self.where}: cudnn average pooling with a window past the padded input "
                                   f"({h}x{w}, kernel {kh}x{kw}, stride {dh}x{dw}, pad {ph}x{pw}, ceil); "
                                   f"cuDNN's divisor there is not reproduced")
            y = F.avg_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil,
                             count_include_pad=self.count_include_pad)
            if self.sum_scale:
                y = y * float(kh * kw)
        if tuple(y.shape[-2:]) != want:
            raise RevivalError(f"{self.where}: Torch7 ({self.flavor}) pooling gives {want[0]}x{want[1]} on "
                               f"{h}x{w} (kernel {kh}x{kw}, stride {dh}x{dw}, pad {ph}x{pw}, ceil={self.ceil}) "
                               f"but PyTorch gives {y.shape[-2]}x{y.shape[-1]}; not reproduced")
        return y


def _softmax_dim(ndim: int) -> int:
    """THNN SoftMax: vector -> dim 1, matrix -> 2, 3-D (C,H,W) -> 1, 4-D (N,C,H,W) -> 2 (1-based)."""
    return 0 if ndim in (1, 3) else 1


class SoftMax(nn.Module):
    """Soft-max (``log`` for LogSoftMax) over Torch7's dimension for the input rank.

    ``over="feature"``: nn.SoftMax / nn.SpatialSoftMax / cudnn.SpatialSoftMax (channels);
    ``over="instance"``: cudnn.SoftMax / cudnn.LogSoftMax, which normalise each sample's
    C*H*W values together (CUDNN_SOFTMAX_MODE_INSTANCE).
    """

    def __init__(self, log: bool, over: str, where: str):
        super().__init__()
        self.log, self.over, self.where = log, over, where

    def forward(self, x):
        if x.dim() not in (1, 2, 3, 4):
            raise RevivalError(f"{self.where}: soft-max of a {x.dim()}-D input")
        fn = F.log_softmax if self.log else F.softmax
        if self.over == "instance" and x.dim() >= 3:
            flat = x.reshape(1 if x.dim() == 3 else x.shape[0], -1)
            return fn(flat, dim=1).reshape(x.shape)
        return fn(x, dim=_softmax_dim(x.dim()))


class Scale(nn.Module):
    """x * c (MulConstant, eval-time Dropout of old models) or x + c (AddConstant), maybe in place."""

    def __init__(self, constant: float, add: bool = False, inplace: bool = False):
        super().__init__()
        self.constant, self.add, self.inplace = float(constant), add, inplace

    def forward(self, x):
        if self.add:
            return x.add_(self.constant) if self.inplace else x + self.constant
        return x.mul_(self.constant) if self.inplace else x * self.constant


class Threshold(nn.Module):
    """nn.Threshold(th, v): x where x > th, else v."""

    def __init__(self, threshold: float, value: float, inplace: bool):
        super().__init__()
        self.threshold, self.value, self.inplace = threshold, value, inplace

    def forward(self, x):
        return F.threshold(x, self.threshold, self.value, self.inplace)


class Pointwise(nn.Module):
    """cudnn.Tanh / cudnn.Sigmoid, which may update their input in place."""

    def __init__(self, name: str, inplace: bool):
        super().__init__()
        self.name, self.inplace = name, inplace

    def forward(self, x):
        return getattr(x, self.name + "_")() if self.inplace else getattr(torch, self.name)(x)


class ZeroPad(nn.Module):
    """nn.SpatialZeroPadding(left, right, top, bottom); negative amounts crop."""

    def __init__(self, left, right, top, bottom):
        super().__init__()
        self.pads = (left, right, top, bottom)

    def forward(self, x):
        return F.pad(x, self.pads)
