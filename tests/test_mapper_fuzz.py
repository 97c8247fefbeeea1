"""Every registered Caffe mapper, fuzzed: only a mapping or an ``UnsupportedOpError`` may come out.

For each op in ``tracecap.mappers.caffe.MAPPERS`` (so mappers registered later are covered without
editing this file) the fuzzer makes real calls of the torch function behind the op - arguments drawn
from the op's canonical signature by parameter name (odd shapes, ranks 0-5, dtypes, broadcasts,
numbers / constants / activations, odd but valid values) - keeps those eager torch accepts, captures
them and converts the graph in both dialects. Then it rebuilds each captured node with the Graph API
with every tensor operand switched between activation and constant. A ``TypeError``, ``IndexError``,
``KeyError`` ... from a mapper, or a layer netspec rejects, fails the test.

An op for which no valid call comes out fails too: give it an entry in ``CALLS`` below.
"""
from __future__ import annotations

import operator
import random
import warnings

import pytest
import torch
import torch.nn.functional as F

import tracecap
from tracecap.graph import Blob, Graph, map_structure
from tracecap.mappers import caffe
from tracecap.mappers.caffe import MAPPERS
from tracecap.ops import SIGNATURES

ATTEMPTS, WANTED = 300, 25
SHAPES = [(2, 3, 5, 7), (1, 4, 6, 6), (3, 2, 1, 9), (2, 6, 1, 1), (3, 5), (1, 7), (2, 3, 9), (4,), (),
          (2, 2, 3, 4, 5), (1, 1, 1, 1)]
DTYPES = [torch.float32] * 6 + [torch.float64, torch.int64, torch.bool, torch.float16]


# ---- values by parameter name ---------------------------------------------------------------------
def _tensor(rng, shape, dtype=torch.float32):
    t = torch.randn(*shape) * rng.choice([1.0, 3.0, 1e-3])
    if dtype == torch.bool:
        return t > 0
    return t.to(dtype)


def _broadcastable(rng, shape):
    """A shape that broadcasts against ``shape``: dims set to 1, leading dims dropped, or the shape itself."""
    s = [1 if rng.random() < 0.4 else d for d in shape]
    cut = rng.randrange(len(s) + 1) if s and rng.random() < 0.3 else 0
    return tuple(s[cut:])


def _dim(rng, x, optional=False):
    if optional and rng.random() < 0.2:
        return None
    n = max(x.dim(), 1)
    return rng.randrange(-n, n)


def _index(rng, x):
    """A basic, stepped or list index for ``x``."""
    items = []
    for d in range(x.dim()):
        n, r = x.shape[d], rng.random()
        if r < 0.3:
            items.append(slice(None))
        elif r < 0.5:
            items.append(slice(rng.randrange(-n, n), rng.choice([None, rng.randrange(n + 1)]), rng.choice([None, 1, 2, 3])))
        elif r < 0.65:
            items.append(rng.randrange(-n, n))
        elif r < 0.8:
            items.append([rng.randrange(-n, n) for _ in range(rng.randint(1, 4))])
        elif r < 0.9:
            items.append(torch.randint(0, n, (rng.randint(1, 3),)))
        else:
            items.append(None)
    if rng.random() < 0.2:
        items = [Ellipsis] + items[rng.randrange(len(items) + 1):]
    return tuple(items[:rng.randint(1, len(items))]) if items else (Ellipsis,)


def _size_like(rng, x):
    shape = list(x.shape)
    r = rng.random()
    if r < 0.3:
        return tuple(shape)
    if r < 0.5 and shape:
        shape[rng.randrange(len(shape))] = -1
        return tuple(shape)
    if r < 0.7:
        return (x.numel(),)
    if r < 0.85:
        return tuple([rng.choice([1, 2, 3])] + shape)
    return tuple(rng.choice([1, 2]) * d if rng.random() < 0.3 else d for d in shape)


def _ints(rng, k, lo, hi):
    return tuple(rng.randint(lo, hi) for _ in range(k))


def _value(rng, name, x, act, default):
    """A value for parameter ``name`` of a call whose input is ``x``; ``act`` makes extra graph inputs."""
    choose = rng.choice
    if name in ("other", "src", "exponent", "value"):
        r = rng.random()
        if r < 0.3:
            return choose([0, 1, 2, -1.5, 0.5, 3.0, True])
        shape = x.shape if r < 0.5 else _broadcastable(rng, tuple(x.shape))
        t = _tensor(rng, shape, choose(DTYPES))
        return act(t) if rng.random() < 0.6 else t
    if name in ("weight", "bias", "running_mean", "running_var"):
        c = x.shape[1] if x.dim() > 1 else (x.shape[0] if x.dim() else 1)
        shape = choose([(c,), (1,), (c, c), (max(c, 1), 1, 1, 1), ()])
        t = _tensor(rng, shape).abs() + (0.1 if name == "running_var" else 0)
        return act(t) if rng.random() < 0.15 else t
    if name in ("dim", "dim0", "dim1", "start_dim", "end_dim"):
        return _dim(rng, x, optional=default is None)
    if name in ("dims", "sizes", "size", "shape", "split_size_or_sections", "shifts", "normalized_shape",
                "output_size", "pad", "kernel_size", "stride", "padding", "dilation", "output_padding",
                "scale_factor", "index", "tensors", "chunks", "upscale_factor", "groups", "repeats"):
        return _structured(rng, name, x, act, default)
    if name in ("start", "length"):
        n = x.shape[0] if x.dim() else 1
        return rng.randint(-n, n)
    if name in ("keepdim", "inplace", "ceil_mode", "count_include_pad", "return_indices", "training",
                "use_input_stats", "align_corners", "antialias", "recompute_scale_factor"):
        return choose([False, False, True, None] if name in ("align_corners", "recompute_scale_factor")
                      else [False, False, True])
    if name in ("mode",):
        return choose(["nearest", "bilinear", "bicubic", "constant", "reflect", "replicate", "linear", "area"])
    if name == "rounding_mode":
        return choose([None, None, "floor", "trunc"])
    if name == "approximate":
        return choose(["none", "tanh"])
    if name in ("min", "max", "min_val", "max_val", "negative_slope", "alpha", "beta", "threshold", "eps",
                "momentum", "fill_value", "lambd", "p", "k"):
        if default is None and rng.random() < 0.3:
            return None
        return choose([0.0, 0.1, 1.0, -1.0, 2.0, 6.0, 1e-5, 0.5, -0.25, 3])
    if name in ("divisor_override",):
        return choose([None, None, 1, 3])
    if name in ("dtype", "memory_format", "_stacklevel", "non_blocking", "out", "layout", "device"):
        return default
    return default


def _structured(rng, name, x, act, default):
    choose, n = rng.choice, x.dim()
    if name == "index":
        if rng.random() < 0.3:
            return rng.randrange(-max(x.shape[0], 1), max(x.shape[0], 1)) if n else 0
        if rng.random() < 0.6 or not n:
            return _index(rng, x) if n else Ellipsis
        return torch.randint(0, max(x.shape[0], 1), (rng.randint(1, 4),))
    if name == "tensors":
        pieces = [x] + [act(_tensor(rng, x.shape)) if rng.random() < 0.6 else _tensor(rng, x.shape)
                        for _ in range(rng.randint(0, 2))]
        return pieces
    if name in ("size", "sizes", "shape"):
        return _size_like(rng, x)
    if name == "dims":
        perm = list(range(n))
        rng.shuffle(perm)
        return tuple(perm) if rng.random() < 0.6 else tuple(perm[:rng.randint(1, max(n, 1))])
    if name in ("chunks", "split_size_or_sections", "upscale_factor", "groups", "repeats"):
        return choose([1, 2, 3, [1, 2], (2, 1, 1)]) if name == "split_size_or_sections" else choose([1, 2, 3])
    if name == "shifts":
        return choose([1, -2, 5, (1, 2)])
    if name == "normalized_shape":
        return tuple(x.shape[-rng.randint(1, max(n, 1)):]) if n else (1,)
    if name == "output_size":
        return choose([1, 2, 3, (2, 3), (None, 2), 5])
    if name == "pad":
        return _ints(rng, choose([2, 4, 6]), -1, 3)
    if name == "scale_factor":
        return choose([None, 2, 1.5, 0.5, (2, 3)])
    if name in ("kernel_size",):
        return choose([1, 2, 3, (2, 3), (1, 5)])
    if name == "stride":
        return choose([None, 1, 2, (1, 2), 3]) if default is None else choose([1, 2, (2, 1), 3])
    if name in ("padding", "output_padding"):
        return choose([0, 1, (0, 1), 2, "same", "valid"] if name == "padding" else [0, 1, (0, 1)])
    if name == "dilation":
        return choose([1, 2, (1, 2)])
    return default


# ---- calls ------------------------------------------------------------------------------------------
def _conv_call(rng, act, transpose=False):
    n, c, h, w = rng.choice([(2, 4, 7, 6), (1, 6, 5, 5), (1, 2, 9, 3)])
    groups = rng.choice([g for g in (1, 2) if c % g == 0])
    k = rng.choice([(1, 1), (3, 3), (2, 3), (3, 1)])
    out = rng.choice([2, 4, 6])
    x = _tensor(rng, (n, c, h, w))
    if transpose:
        weight = torch.randn(c, out // groups if out % groups == 0 else out, *k)
        kw = dict(stride=rng.choice([1, 2]), padding=rng.choice([0, 1]), output_padding=rng.choice([0, 1]),
                  groups=groups, dilation=rng.choice([1, 2]))
        fn = F.conv_transpose2d
    else:
        weight = torch.randn(out * groups // groups if out % groups == 0 else out, c // groups, *k)
        kw = dict(stride=rng.choice([1, 2]), padding=rng.choice([0, 1, "same", (1, 0)]),
                  dilation=rng.choice([1, 2]), groups=groups)
        fn = F.conv2d
    bias = rng.choice([None, torch.randn(weight.shape[1] * groups if transpose else weight.shape[0])])
    if rng.random() < 0.1:
        weight = act(weight)
    return (lambda x_: fn(x_, weight, bias, **kw)), x


def _linear_call(rng, act):
    x = _tensor(rng, rng.choice([(3, 5), (2, 3, 5), (5,), (2, 1, 4, 5)]))
    weight = torch.randn(rng.choice([1, 4]), 5)
    bias = rng.choice([None, torch.randn(weight.shape[0])])
    return (lambda x_: F.linear(x_, act(weight) if rng.random() < 0.1 else weight, bias)), x


def _batch_norm_call(rng, act):
    x = _tensor(rng, rng.choice([(2, 3, 4, 5), (4, 3), (2, 3, 7)]))
    stats = [torch.randn(3), torch.rand(3) + 0.5]
    affine = rng.choice([None, (torch.randn(3), torch.randn(3))])
    training = rng.random() < 0.2
    return (lambda x_: F.batch_norm(x_, *stats, *(affine or (None, None)), training, 0.1,
                                    rng.choice([1e-5, 1e-3]))), x


def _setitem_call(rng, act):
    x = _tensor(rng, rng.choice([(2, 3, 5, 7), (3, 4), (2, 6, 1, 1)]))
    index = _index(rng, x)
    value = _value(rng, "value", x[index], act, None)

    def fn(x_):
        y = x_ * 1
        y[index] = value
        return y
    return fn, x


def _copy_call(rng, act):
    x = _tensor(rng, rng.choice([(2, 3, 5), (2, 6, 1, 1), (4,)]))
    src = _value(rng, "src", x, act, None)

    def fn(x_):
        y = x_ * 1
        y.copy_(src if isinstance(src, torch.Tensor) else torch.tensor(src))
        return y
    return fn, x


def _matmul_call(rng, act, fn=torch.matmul):
    x = _tensor(rng, rng.choice([(3, 5), (2, 3, 5)] if fn is torch.matmul else [(3, 5)]))
    other = rng.choice([torch.randn(5, 4), torch.randn(5)] if fn is torch.matmul else [torch.randn(5, 4)])
    other = act(other) if rng.random() < 0.3 else other
    return (lambda x_: fn(x_, other)), x


def _as_call(method):
    def make(rng, act):
        x = _tensor(rng, rng.choice([(2, 1, 5, 1), (3, 4), (1, 6), (2, 3, 1)]))
        shape = tuple(rng.choice([1, 2, 3]) if d == 1 else d for d in x.shape) if method == "expand_as" else \
            rng.choice([(x.numel(),), tuple(reversed(x.shape)), (1,) + tuple(x.shape)])
        other = _tensor(rng, shape)
        other = act(other) if rng.random() < 0.7 else other
        return (lambda x_: getattr(x_, method)(other)), x
    return make


def _interpolate_call(rng, act):
    x = _tensor(rng, rng.choice([(2, 3, 5, 7), (1, 2, 4, 4), (1, 3, 9, 1)]))
    mode = rng.choice(["nearest", "bilinear", "bicubic", "area", "nearest-exact"])
    size = rng.choice([None, (10, 14), (3, 5), 8])
    scale = None if size else rng.choice([2, 1.5, 0.5, (2, 3), 3])
    corners = rng.choice([None, True, False]) if mode in ("bilinear", "bicubic") else None
    return (lambda x_: F.interpolate(x_, size=size, scale_factor=scale, mode=mode, align_corners=corners)), x


def _compare_call(op):
    def make(rng, act):
        x = _tensor(rng, rng.choice([(2, 3, 5), (2, 6, 1, 1), (4,)]))
        other = _value(rng, "other", x, act, None)
        fn = getattr(torch, op)
        if rng.random() < 0.5:  # compared and used as a mask, the way models use comparisons
            return (lambda x_: x_ * fn(x_, other)), x
        return (lambda x_: fn(x_, other)), x
    return make


def _where_call(rng, act):
    x = _tensor(rng, rng.choice([(2, 3, 5), (2, 6, 1, 1), (4,)]))
    s = rng.choice([0.0, 0.5, -1.0])
    other = rng.choice([lambda x_: x_ * 0.1, lambda x_: torch.full_like(x_, s), lambda x_: s, lambda x_: -x_])
    cmp = rng.choice([torch.gt, torch.lt, torch.ge, torch.le])
    return (lambda x_: torch.where(cmp(x_, s), x_, other(x_))), x


def _group_norm_call(rng, act):
    c = rng.choice([4, 6])
    x = _tensor(rng, rng.choice([(2, c, 5, 3), (1, c, 7), (3, c)]))
    groups = rng.choice([1, 2, c])
    affine = rng.choice([None, (torch.randn(c), torch.randn(c))])
    return (lambda x_: F.group_norm(x_, groups, *(affine or (None, None)), eps=rng.choice([1e-5, 1e-2]))), x


def _lrn_call(rng, act):
    x = _tensor(rng, rng.choice([(2, 7, 5, 3), (1, 4, 6), (2, 5, 2, 3, 2)]))
    size, k = rng.choice([1, 2, 3, 5]), rng.choice([1.0, 2.0, 0.0])
    return (lambda x_: F.local_response_norm(x_, size, alpha=rng.choice([1e-4, 0.1]), beta=0.75, k=k)), x


def _unpool_call(rng, act):
    x = _tensor(rng, rng.choice([(2, 3, 8, 6), (1, 2, 5, 7)]))
    k, st = rng.choice([(2, 2), (3, 3), (3, 2), (2, 1)])
    full = rng.random() < 0.5

    def fn(x_):
        y, idx = F.max_pool2d(x_, k, st, return_indices=True)
        return F.max_unpool2d(y, idx, k, st, output_size=x_.shape[2:] if full else None)
    return fn, x


def _quantized_call(op):
    """A call of a quantized module or FloatFunctional whose captured node is ``op`` (or quantize_per_tensor)."""
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd
    import torch.ao.nn.intrinsic.quantized as nniq

    def make(rng, act):
        torch.backends.quantized.engine = rng.choice(torch.backends.quantized.supported_engines[-2:])
        name = op.split("::")[-1]
        if "conv2d" in name:
            x = _tensor(rng, (1, 4, 6, 5))
            mod = (nniq.ConvReLU2d if "relu" in name else nnq.Conv2d)(4, rng.choice([2, 4]), 3,
                                                                     padding=rng.choice([0, 1]))
        elif "linear" in name:
            x = _tensor(rng, rng.choice([(3, 5), (2, 3, 5)]))
            if "dynamic" in name:
                mod = nnqd.Linear(5, 4)
                if "relu" in name:
                    mod = torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU(5, 4)
                return (lambda x_: mod(x_)), x
            mod = (nniq.LinearReLU if "relu" in name else nnq.Linear)(5, 4)
        else:
            x = _tensor(rng, rng.choice([(2, 3, 5), (1, 4, 2, 2)]))
            other = _tensor(rng, x.shape)
            ff = nnq.QFunctional()
            ff.scale, ff.zero_point = 0.05, rng.choice([0, 64, 128])
            call = {"add": ff.add, "add_relu": ff.add_relu, "mul": ff.mul,
                    "mul_relu": lambda a, b: torch.ops.quantized.mul_relu(a, b, ff.scale, ff.zero_point),
                    "cat": lambda a, b: ff.cat([a, b], 1),
                    "cat_relu": lambda a, b: torch.ops.quantized.cat_relu([a, b], 1, ff.scale, ff.zero_point),
                    "quantize_per_tensor": lambda a, b: a}[name]

            def fn(x_):
                qa = torch.quantize_per_tensor(x_, 0.03, 128, torch.quint8)
                qb = torch.quantize_per_tensor(other, 0.04, 120, torch.quint8)
                return call(qa, qb).dequantize()
            return fn, x

        def fn(x_):
            return mod(torch.quantize_per_tensor(x_, 0.03, 128, torch.quint8)).dequantize()
        return fn, x
    return make


CALLS = {  # ops whose arguments the signature alone cannot draw sensibly: (rng, act) -> (fn, input)
    **{op: _compare_call(op) for op in ("eq", "ne", "gt", "ge", "lt", "le")},
    "where": _where_call,
    "group_norm": _group_norm_call,
    "local_response_norm": _lrn_call,
    "log_sigmoid": lambda rng, act: ((lambda x_: F.logsigmoid(x_)), _tensor(rng, rng.choice(SHAPES[:8]))),
    "max_unpool2d": _unpool_call,
    **{op: _quantized_call(op) for op in (
        "quantize_per_tensor", "quantized::add", "quantized::add_relu", "quantized::mul", "quantized::mul_relu",
        "quantized::cat", "quantized::cat_relu", "quantized::conv2d", "quantized::conv2d_relu",
        "quantized::linear", "quantized::linear_relu", "quantized::linear_dynamic",
        "quantized::linear_relu_dynamic")},
    "conv2d": _conv_call,
    "conv_transpose2d": lambda rng, act: _conv_call(rng, act, transpose=True),
    "linear": _linear_call,
    "batch_norm": _batch_norm_call,
    "setitem": _setitem_call,
    "copy": _copy_call,
    "matmul": _matmul_call,
    "interpolate": _interpolate_call,
    "mm": lambda rng, act: _matmul_call(rng, act, torch.mm),
    "expand_as": _as_call("expand_as"),
    "view_as": _as_call("view_as"),
    "reshape_as": _as_call("reshape_as"),
    "getitem": lambda rng, act: _getitem_call(rng),
}


def _getitem_call(rng):
    x = _tensor(rng, rng.choice([s for s in SHAPES if s]))
    index = _index(rng, x)
    return (lambda x_: operator.getitem(x_, index)), x


def _callable(op):
    for owner in (F, torch, torch.Tensor):
        fn = getattr(owner, op, None)
        if callable(fn):
            return fn
    return None


def _generic_call(op, rng, act):
    fn, sig = _callable(op), SIGNATURES.get(op)
    if fn is None or sig is None:
        return None
    x = _tensor(rng, rng.choice(SHAPES), rng.choice(DTYPES))
    args = []
    for name, kind, default in sig[1:]:
        if kind == "req" or kind == "*" or rng.random() < 0.6:
            args.append(_value(rng, name, x, act, default))  # a "*size" as one tuple: torch takes both forms
        else:
            break  # leave this and the later optional parameters at their defaults
    if sig[0][0] == "tensors":  # cat, stack: a list with the input in it
        rest = _value(rng, "tensors", x, act, None)[1:]
        return (lambda x_: fn([x_, *rest], *args)), x
    return (lambda x_: fn(x_, *args)), x


def _variants(op, seed):
    """(fn, inputs) pairs torch accepts for ``op``."""
    rng = random.Random(f"{op}:{seed}")
    found = []
    for _ in range(ATTEMPTS):
        extra = []

        def act(t):
            extra.append(t)
            return t
        try:
            made = CALLS[op](rng, act) if op in CALLS else _generic_call(op, rng, act)
            if made is None:
                return found
            fn, x = made
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn(x.clone())
        except Exception:  # not a valid torch call: the mapper never sees it
            continue
        inputs = (x, *extra)
        found.append((fn, inputs))
        if len(found) >= WANTED:
            break
    return found


def _capture(fn, inputs):
    x, *extra = inputs
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tracecap.capture() as cap:
                fn(x)
        return cap.build(inputs=[x, *extra])
    except tracecap.TracecapError:
        return None  # a capture-level refusal: not what this test is about


def _convert(graph, what):
    for dialect in caffe.DIALECTS:
        try:
            caffe.to_net(graph, dialect)
        except tracecap.UnsupportedOpError:
            pass
        except tracecap.MappingError as exc:
            if not str(exc).startswith("graph input"):  # a 0-d graph input: no Caffe Input shape, said so
                raise AssertionError(f"{what} ({dialect}): MappingError: {exc}\n{graph}") from exc
        except Exception as exc:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"{what} ({dialect}): {type(exc).__name__}: {exc}\n{graph}") from exc


def _random_like(b):
    """A random constant with blob ``b``'s shape, dtype and quantization."""
    x = torch.randn(*(b.shape or ()))
    if b.quant is not None:
        q = b.quant
        if q.scheme == "per_channel_affine":
            return torch.quantize_per_channel(x, torch.tensor(q.scale), torch.tensor(q.zero_point), q.axis, q.dtype)
        return torch.quantize_per_tensor(x, q.scale, q.zero_point, q.dtype)
    return x.to(b.dtype) if b.dtype is not None else x


def _flipped(node, blob):
    """A one-node graph of ``node`` with operand ``blob`` turned from activation to constant or back."""
    g = Graph()
    made = {}

    def renew(b):
        if not isinstance(b, Blob):
            return b
        if b not in made:
            flip = b is blob
            constant = b.is_constant != flip
            value = (b.value if b.is_constant else _random_like(b)) if constant else None
            made[b] = g.add_blob(b.name, "const" if constant else "input", b.shape, b.dtype, value=value,
                                 quant=b.quant)
            if not constant:
                g.inputs.append(made[b])
        return made[b]
    params = map_structure(node.params, renew)
    if not g.inputs:
        return None
    tops = [g.add_blob(t.name, "activation", t.shape, t.dtype) for t in node.tops]
    g.create_node(node.name, node.op, params, tops=tops, meta={"source": "fuzz.py:1"})
    g.outputs = list(tops)
    return g


@pytest.mark.parametrize("op", sorted(MAPPERS))
def test_mapper_maps_or_refuses(op):
    nodes = 0
    for k, (fn, inputs) in enumerate(_variants(op, 0)):
        graph = _capture(fn, inputs)
        if graph is None:
            continue
        _convert(graph, f"{op} variant {k}")
        for node in [n for n in graph.nodes if n.op == op]:
            nodes += 1
            for blob in node.bottoms:
                flipped = _flipped(node, blob)
                if flipped is not None:
                    _convert(flipped, f"{op} variant {k} with {blob.name} {'active' if blob.is_constant else 'constant'}")
    assert nodes, (f"the fuzzer made no valid call of `{op}`: add an entry for it to CALLS in "
                   f"tests/test_mapper_fuzz.py")


def test_every_registered_op_is_fuzzed():
    """The parametrization reads the registry, so an op registered later is fuzzed without edits."""
    params = [m for m in test_mapper_maps_or_refuses.pytestmark if m.name == "parametrize"][0].args[1]
    assert set(params) == set(MAPPERS)
