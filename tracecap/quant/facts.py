"""From a captured graph to a quantized program: every integer, scale and zero point, per op.

``read_graph(graph)`` walks the nodes once. Quantized kernels (``quantized::linear`` ...) carry
their weights in the engine's packed ScriptObject, which is unpacked here (``linear_unpack`` /
``conv2d_unpack``: an int8 tensor with ``q_scale``/``q_per_channel_scales``, and a float bias);
activations carry their scale and zero point on the graph's blobs (``Blob.quant``). The memory
layout of every activation is read from a replay of the graph on zeros (``.stride()``). Anything
the executor cannot reproduce is collected and refused at once, naming module and source line.
"""
from __future__ import annotations

import numpy as np

from tracecap.errors import UnsupportedOpError
from tracecap.graph import Blob
from tracecap.ops import DEQUANTIZE_OPS, QUANTIZE_OPS, RESHAPE_OPS
from tracecap.quant import arithmetic as A
from tracecap.quant import engines, layout as layouts
from tracecap.quant.errors import QuantError
from tracecap.quant.program import FORMAT, INT8_OFFSET, VERSION, Program, encode

LINEAR_OPS = {"quantized::linear": False, "quantized::linear_relu": True}
DYNAMIC_OPS = {"quantized::linear_dynamic": False, "quantized::linear_relu_dynamic": True}
CONV_OPS = {"quantized::conv2d": False, "quantized::conv2d_relu": True}
BINARY_OPS = {"quantized::add": ("add", False), "quantized::add_relu": ("add", True),
              "quantized::mul": ("mul", False), "quantized::mul_relu": ("mul", True)}
CAT_OPS = {"quantized::cat": False, "quantized::cat_relu": True}
SHAPE_OPS = RESHAPE_OPS | {"squeeze", "unsqueeze"}
# float ops after the last dequantize that the executor leaves to the caller (outputs are the codes before them)
FLOAT_TAIL = frozenset({"softmax", "log_softmax", "sigmoid", "tanh", "relu", "flatten", "view", "reshape", "squeeze",
                        "unsqueeze", "mul", "add", "sub", "div", "clamp", "hardtanh"})
# float ops the executor computes exactly (between dynamically quantized layers)
FLOAT_EXACT = frozenset({"relu"}) | SHAPE_OPS


def is_quantized(graph):
    """True when the graph holds quantized tensors or ops (what ``export`` requires)."""
    return any(b.quant is not None for b in graph.blobs.values()) or any(
        n.op in QUANTIZE_OPS or n.op.startswith("quantized::") for n in graph.nodes)


def unpack_linear(packed):
    import torch
    return torch.ops.quantized.linear_unpack(packed)


def unpack_conv(packed):
    """(weight, bias, stride, padding, dilation, groups, transposed) of a Conv2dPackedParams object."""
    import torch
    weight, bias = torch.ops.quantized.conv2d_unpack(packed)
    return (weight, bias, tuple(packed.stride()), tuple(packed.padding()), tuple(packed.dilation()),
            int(packed.groups()), bool(packed.transpose()))


class _Refuse(Exception):
    pass


class _Reader:
    def __init__(self, graph, engine, weight_layout, int8_as):
        self.g = graph
        self.engine = engines.check_engine(engine or engines.current_engine())
        self.rules = engines.rules(self.engine)
        if weight_layout not in ("OIHW", "OHWI"):
            raise QuantError(f"weight_layout must be 'OIHW' (logical, NCHW) or 'OHWI' (channels-last, NHWC), "
                             f"got {weight_layout!r}")
        if int8_as not in ("int8", "uint8"):
            raise QuantError(f"int8_as must be 'int8' or 'uint8', got {int8_as!r}")
        self.weight_layout, self.int8_as = weight_layout, int8_as
        self.arrays, self.ops, self.tensors, self.refusals = {}, [], {}, []
        self.strides = {}
        self.float_tail = []
        self.tail_blobs = set()    # blobs computed by float ops after the last dequantize (not executed)

    # ---- entry ------------------------------------------------------------------------------
    def run(self):
        if not is_quantized(self.g):
            raise QuantError(
                "this graph has no quantized tensors or ops: it is a float model. tracecap.quant exports models "
                "quantized with torch.ao.quantization (prepare/convert, prepare_fx/convert_fx, quantize_dynamic); "
                "for a float model use tracecap.mappers.caffe.save")
        self.strides = _replay_strides(self.g)
        for blob in self.g.inputs:
            self._tensor(blob)
        for node in self.g.nodes:
            try:
                self._node(node)
            except _Refuse as exc:
                self.refusals.append((node, str(exc)))
        if self.refusals:
            problems = [f"{node.where()}: {why}" for node, why in self.refusals]
            raise UnsupportedOpError(
                f"{len(problems)} op(s) of this quantized graph cannot be exported for the integer executor:\n  - "
                + "\n  - ".join(problems), problems, self.refusals)
        manifest = {
            "format": FORMAT, "version": VERSION,
            "torch_version": _torch_version(), "engine": self.engine, "arithmetic": self.rules,
            "int8_stored_as": self.int8_as, "weight_layout": self.weight_layout,
            "inputs": [self._input(b) for b in self.g.inputs],
            "outputs": [self._output(b) for b in self.g.outputs],
            "tensors": self.tensors, "ops": self.ops, "float_tail": self.float_tail,
            "conventions": CONVENTIONS,
        }
        return Program(manifest, self.arrays)

    # ---- tensors ----------------------------------------------------------------------------
    def _tensor(self, blob):
        if blob.name in self.tensors:
            return blob.name
        stride = self.strides.get(blob.name)
        shape = list(blob.shape) if blob.shape is not None else None
        entry = {"dtype": "float32" if blob.quant is None else _dtype_name(blob.quant.dtype), "shape": shape,
                 "pytorch_stride": list(stride) if stride is not None else None,
                 "layout": layouts.layout_name(shape, stride) if stride is not None and shape else None}
        q = blob.quant
        if q is not None:
            if q.scheme != "per_tensor_affine":
                raise _Refuse(f"activation {blob.name} is quantized per channel; the executor needs per-tensor "
                              f"activations")
            entry.update(scale=float(q.scale), zero_point=int(q.zero_point),
                         scale_array=f"activations/{blob.name}.scale",
                         zero_point_array=f"activations/{blob.name}.zero_point")
            self.arrays[entry["scale_array"]] = np.array(float(q.scale), dtype=np.float64)
            self.arrays[entry["zero_point_array"]] = np.array(int(q.zero_point), dtype=np.int64)
        self.tensors[blob.name] = entry
        return blob.name

    def _input(self, blob):
        return {"name": blob.name, **{k: self.tensors[blob.name][k] for k in ("dtype", "shape")}}

    def _output(self, blob):
        """What ``execute`` returns for a graph output: codes (the tensor before a trailing dequantize) or floats."""
        tail, b = [], blob
        while b.name in self.tail_blobs:
            tail.append(b.producer.op)
            b = _data_input(b.producer)
        if b.producer is not None and b.producer.op in DEQUANTIZE_OPS:
            tail.append("dequantize")
            b = _data_input(b.producer)
        if b.quant is not None:
            return {"name": blob.name, "kind": "codes", "tensor": b.name, "dtype": self.tensors[b.name]["dtype"],
                    "then_in_float": list(reversed(tail))}
        return {"name": blob.name, "kind": "float", "tensor": blob.name, "dtype": "float32", "then_in_float": []}

    # ---- nodes ------------------------------------------------------------------------------
    def _node(self, node):
        op = node.op
        handler = None
        if op in QUANTIZE_OPS:
            handler = self._quantize
        elif op in DEQUANTIZE_OPS:
            handler = self._dequantize
        elif op in LINEAR_OPS or op in DYNAMIC_OPS:
            handler = self._linear
        elif op in CONV_OPS:
            handler = self._conv
        elif op in BINARY_OPS:
            handler = self._binary
        elif op in CAT_OPS:
            handler = self._cat
        elif op.startswith("quantized::"):
            raise _Refuse(f"`{op}` has no integer reference in tracecap.quant (supported: quantize_per_tensor, "
                          f"dequantize, quantized linear/conv2d/add/mul/cat and their _relu forms, linear_dynamic, "
                          f"relu, max_pool2d, flatten/view/reshape)")
        else:
            handler = self._plain
        entry = handler(node)
        if entry is None:
            return
        entry = {"name": node.name, **entry, "pytorch_op": op, "module": node.scope,
                 "module_type": node.meta.get("module"), "source": node.source}
        self.ops.append(entry)

    def _io(self, node, inputs):
        for b in inputs:
            if b.name in self.tail_blobs:
                raise _Refuse(f"it reads {b.name}, which `{b.producer.op}` computes in float after a dequantize; "
                              f"float ops inside the quantized part are not reproduced")
            self._tensor(b)
        outs = [self._tensor(t) for t in node.tops]
        return {"inputs": [b.name for b in inputs], "outputs": outs}

    def _quantize(self, node):
        src, top = node.params["input"], node.tops[0]
        if top.quant is None or top.quant.scheme != "per_tensor_affine":
            raise _Refuse("only per-tensor quantize_per_tensor of activations is reproduced")
        return {"kind": "quantize", **self._io(node, [src])}

    def _dequantize(self, node):
        src = node.params["input"]
        if not isinstance(src, Blob) or src.quant is None:
            raise _Refuse("dequantize of a tensor that is not quantized")
        return {"kind": "dequantize", **self._io(node, [src])}

    def _linear(self, node):
        dynamic = node.op in DYNAMIC_OPS
        relu = (DYNAMIC_OPS if dynamic else LINEAR_OPS)[node.op]
        src, top = node.params["input"], node.tops[0]
        weight, bias = unpack_linear(node.params["packed_params"])
        entry = {"kind": "linear_dynamic" if dynamic else "linear", "relu": relu, **self._io(node, [src]),
                 "in_features": int(weight.shape[1]), "out_features": int(weight.shape[0])}
        entry["weight"] = self._weight(node, weight)
        if dynamic:
            entry["reduce_range"] = bool(node.params.get("reduce_range"))
            entry["bias"] = self._bias_float(node, bias)
            return entry
        self._require_quantized(src, top)
        entry.update(self._bias_and_requantize(node, weight, bias, src.quant.scale, top.quant.scale))
        return entry

    def _conv(self, node):
        src, top = node.params["input"], node.tops[0]
        weight, bias, stride, padding, dilation, groups, transposed = unpack_conv(node.params["packed_params"])
        if transposed:
            raise _Refuse("transposed quantized convolution is not reproduced")
        if weight.dim() != 4:
            raise _Refuse(f"only 2-d quantized convolution is reproduced (weight has {weight.dim()} dims)")
        if self.rules.get("x86_conv_backend") == "onednn":
            raise _Refuse("on this CPU (VNNI) the x86 engine runs quantized convolutions with oneDNN, whose "
                          "arithmetic is not reproduced; use the fbgemm engine")
        self._require_quantized(src, top)
        entry = {"kind": "conv2d", "relu": CONV_OPS[node.op], **self._io(node, [src]),
                 "stride": list(stride), "padding": list(padding), "dilation": list(dilation), "groups": groups,
                 "weight": self._weight(node, weight)}
        entry.update(self._bias_and_requantize(node, weight, bias, src.quant.scale, top.quant.scale))
        return entry

    def _binary(self, node):
        kind, relu = BINARY_OPS[node.op]
        a, b, top = node.params["input"], node.params["other"], node.tops[0]
        if not (isinstance(a, Blob) and isinstance(b, Blob)):
            raise _Refuse(f"quantized {kind} with a scalar operand is not reproduced")
        self._require_quantized(a, top)
        self._require_quantized(b, top)
        if tuple(a.shape) != tuple(b.shape):
            raise _Refuse(f"quantized {kind} with broadcasting ({list(a.shape)} and {list(b.shape)}) is not reproduced")
        entry = {"kind": kind, "relu": relu, **self._io(node, [a, b])}
        if kind == "add" and self.rules["family"] == "qnnpack" and top.quant.dtype is _quint8():
            try:
                am, bm, shift = A.qnnpack_add_params(a.quant.scale, b.quant.scale, top.quant.scale)
            except ValueError as exc:
                raise _Refuse(str(exc)) from None
            entry["qnnpack"] = {"a_multiplier": am, "b_multiplier": bm, "right_shift": shift}
        return entry

    def _cat(self, node):
        parts, top = list(node.params["tensors"]), node.tops[0]
        for p in parts:
            if not isinstance(p, Blob):
                raise _Refuse("quantized cat of a non-tensor")
            self._require_quantized(p, top)
        dim = int(node.params["dim"])
        return {"kind": "cat", "relu": CAT_OPS[node.op], "dim": dim + len(top.shape) if dim < 0 else dim,
                **self._io(node, parts)}

    def _plain(self, node):
        """Ops known from float models (relu, max_pool2d, flatten ...) applied to quantized or float tensors."""
        src = node.params.get("input")
        if not isinstance(src, Blob):
            raise _Refuse(f"`{node.op}` without a tensor input in a quantized graph")
        if src.quant is None:
            return self._float(node, src)
        top = node.tops[0] if node.tops else None
        if top is None or top.quant is None:
            raise _Refuse(f"`{node.op}` turns a quantized tensor into a float one; only dequantize may do that")
        if (top.quant.scale, top.quant.zero_point) != (src.quant.scale, src.quant.zero_point):
            raise _Refuse(f"`{node.op}` changes the quantization parameters; not reproduced")
        if node.op == "relu":
            return {"kind": "relu", **self._io(node, [src])}
        if node.op == "max_pool2d":
            p = node.params
            if p.get("return_indices"):
                raise _Refuse("max_pool2d with return_indices")
            return {"kind": "max_pool2d", **self._io(node, [src]), "kernel_size": _pair(p["kernel_size"]),
                    "stride": _pair(p["stride"] if p["stride"] not in (None, [], ()) else p["kernel_size"]),
                    "padding": _pair(p["padding"]), "dilation": _pair(p["dilation"]), "ceil_mode": bool(p["ceil_mode"])}
        if node.op in SHAPE_OPS:
            return {"kind": "reshape", **self._io(node, [src]), "shape": list(node.tops[0].shape)}
        raise _Refuse(f"`{node.op}` on a quantized tensor has no integer reference in tracecap.quant")

    def _float(self, node, src):
        """A float op: computed exactly (relu/reshape between dynamic layers) or left as the float tail."""
        if all(self._after_dequantize(b) for b in node.bottoms if not b.is_constant):
            if node.op not in FLOAT_TAIL:
                raise _Refuse(f"float `{node.op}` after dequantize: outputs must follow the last dequantize "
                              f"through {', '.join(sorted(FLOAT_TAIL))} only")
            self.float_tail.append({"name": node.name, "op": node.op, "source": node.source})
            self.tail_blobs.update(self._tensor(t) for t in node.tops)
            return None
        if node.op in FLOAT_EXACT:
            kind = "relu_float" if node.op == "relu" else "reshape"
            entry = {"kind": kind, **self._io(node, [src])}
            if kind == "reshape":
                entry["shape"] = list(node.tops[0].shape)
            return entry
        raise _Refuse(f"float `{node.op}` inside a quantized graph is not reproduced by the integer executor "
                      f"(it must come after the last dequantize)")

    def _after_dequantize(self, blob):
        p = blob.producer
        return p is not None and (p.op in DEQUANTIZE_OPS or blob.name in self.tail_blobs)

    # ---- weights, biases, multipliers ----------------------------------------------------------
    @staticmethod
    def _require_quantized(src, top):
        for b, what in ((src, "input"), (top, "output")):
            if not isinstance(b, Blob) or b.quant is None:
                raise _Refuse(f"its {what} is not a quantized tensor")
            if b.quant.scheme != "per_tensor_affine":
                raise _Refuse(f"its {what} is quantized per channel")
        if src.quant.dtype is not _quint8() or top.quant.dtype is not _quint8():
            raise _Refuse("the CPU kernels take and give quint8 activations; this one is "
                          f"{_dtype_name(src.quant.dtype)} -> {_dtype_name(top.quant.dtype)}")

    def _weight(self, node, weight):
        import torch
        if weight.dtype is not torch.qint8:
            raise _Refuse(f"weight dtype {weight.dtype} (only qint8 weights are reproduced)")
        key = f"ops/{node.name}.weight"
        ints = weight.int_repr().numpy()
        entry = {"array": key, "dtype": "qint8", "stored_as": self.int8_as, "shape": list(weight.shape),
                 "pytorch_stride": list(weight.stride()),
                 "pytorch_layout": layouts.layout_name(tuple(weight.shape), tuple(weight.stride()), weight=True),
                 "layout": layouts.layout_name(tuple(weight.shape), tuple(_contiguous_strides(weight.shape)),
                                               weight=True),
                 "scale": key + ".scale", "zero_point": key + ".zero_point"}
        if weight.dim() == 4 and self.weight_layout == "OHWI":
            entry["layout"] = "OHWI"
        ints = layouts.to_layout(ints, entry["layout"], weight=True) if weight.dim() >= 3 else ints
        self.arrays[key] = encode(ints, "qint8", self.int8_as)
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            entry.update(qscheme="per_channel_affine", axis=int(weight.q_per_channel_axis()))
            scales = weight.q_per_channel_scales().double().numpy()
            zps = weight.q_per_channel_zero_points().numpy().astype(np.int64)
            if entry["axis"] != 0:
                raise _Refuse(f"per-channel weight quantized along axis {entry['axis']} (expected the output axis 0)")
        elif weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            entry.update(qscheme="per_tensor_affine", axis=None)
            scales = np.array([weight.q_scale()], dtype=np.float64)
            zps = np.array([weight.q_zero_point()], dtype=np.int64)
        else:
            raise _Refuse(f"weight quantization scheme {weight.qscheme()} is not reproduced")
        self.arrays[entry["scale"]] = scales
        self.arrays[entry["zero_point"]] = zps + (INT8_OFFSET if self.int8_as == "uint8" else 0)
        if entry["qscheme"] == "per_tensor_affine":  # readable copies, in the file's encoding like the arrays
            entry["scale_value"] = float(scales[0])
            entry["zero_point_value"] = int(self.arrays[entry["zero_point"]][0])
        return entry

    def _bias_float(self, node, bias):
        if bias is None:
            return None
        key = f"ops/{node.name}.bias"
        self.arrays[key] = bias.detach().float().numpy().copy()
        return {"array": key}

    def _bias_and_requantize(self, node, weight, bias, in_scale, out_scale):
        """Bias (float and int32 at s_in*s_w) and the requantization multiplier, per output channel."""
        key = f"ops/{node.name}"
        n_out = int(weight.shape[0])
        w_scale = np.broadcast_to(self.arrays[key + ".weight.scale"], (n_out,)).astype(np.float64)
        fbgemm = self.rules["family"] == "fbgemm"
        if fbgemm:
            atw, mult = A.fbgemm_multiplier(in_scale, w_scale, out_scale)
        else:
            atw = (A.f32(w_scale) * A.f32(in_scale)).astype(A.F32)
            mult = A.qnnpack_multiplier(in_scale, w_scale, out_scale)
        m0, shift = A.fixed_point_multiplier(mult)
        out = {"requantize": {"multiplier": key + ".requantize.multiplier",
                              "multiplier_int32": key + ".requantize.multiplier_int32",
                              "right_shift": key + ".requantize.right_shift",
                              "act_times_weight_scale": key + ".requantize.act_times_weight_scale"}}
        self.arrays[key + ".requantize.multiplier"] = mult.astype(np.float32)
        self.arrays[key + ".requantize.multiplier_int32"] = m0
        self.arrays[key + ".requantize.right_shift"] = shift
        self.arrays[key + ".requantize.act_times_weight_scale"] = atw.astype(np.float32)
        out["bias"] = self._bias_float(node, bias)
        if out["bias"] is not None:
            int32_scale = w_scale * float(in_scale)         # double product, as PyTorch's QuantizeBias
            b32 = A.quantize(self.arrays[key + ".bias"], int32_scale, 0, -2 ** 31, 2 ** 31 - 1, rule="mul_add_round")
            self.arrays[key + ".bias.int32"] = b32.astype(np.int32)
            self.arrays[key + ".bias.int32.scale"] = int32_scale
            out["bias"].update(int32=key + ".bias.int32", int32_scale=key + ".bias.int32.scale")
        return out


CONVENTIONS = [
    "real value = (code - zero_point) * scale; code = clamp(round(real / scale) + zero_point) as the arithmetic "
    "section says exactly (PyTorch multiplies by float32(1/scale), it does not divide)",
    "activations are quint8 (codes 0..255); weights qint8 (-128..127), written as uint8 (+128 on values and zero "
    "points) when int8_stored_as is 'uint8'",
    "shapes and 'layout' of weights are for the arrays as written; 'pytorch_layout'/'pytorch_stride' are how PyTorch "
    "keeps them in memory (quantized conv weights and activations are channels-last, NHWC)",
    "bias.int32 = round(bias / (s_in * s_w)); PyTorch's fbgemm engine adds the float bias instead "
    "(acc + bias / (s_in * s_w) in float32), its qnnpack engine adds this int32",
    "requantize.multiplier is the float32 s_in * s_w / s_out the engine multiplies the accumulator by; "
    "multiplier_int32 and right_shift are the integer-only form multiplier ~= M0 * 2**-shift, which PyTorch "
    "does not use",
]


def read_graph(graph, engine=None, weight_layout="OIHW", int8_as="int8"):
    """The quantized program (manifest + arrays) of a captured graph; raises before anything is written."""
    return _Reader(graph, engine, weight_layout, int8_as).run()


# ---- helpers -------------------------------------------------------------------------------------
def _replay_strides(graph):
    """Every blob's strides, from one replay of the graph on zero inputs of the captured shapes."""
    import warnings
    import torch
    from tracecap import replay
    inputs = []
    for b in graph.inputs:
        if b.shape is None:
            return {}
        if b.quant is not None:
            t = torch.quantize_per_tensor(torch.zeros(b.shape), b.quant.scale, b.quant.zero_point, b.quant.dtype) \
                if b.quant.scheme == "per_tensor_affine" else None
            if t is None:
                return {}
        else:
            t = torch.zeros(b.shape, dtype=b.dtype if b.dtype is not None and b.dtype.is_floating_point else None)
        inputs.append(t)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, env = replay.run(graph, *inputs, return_env=True)
    except Exception as exc:  # the replay is only for layouts; say why they are missing
        raise QuantError(f"replaying the captured graph (to read memory layouts) failed: "
                         f"{type(exc).__name__}: {exc}") from None
    return {name: tuple(v.stride()) for name, v in env.items() if isinstance(v, torch.Tensor) and v.layout == torch.strided}


def _contiguous_strides(shape):
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def _data_input(node):
    b = node.params.get("input")
    return b if isinstance(b, Blob) else node.bottoms[0]


def _pair(v):
    if isinstance(v, (list, tuple)):
        return [int(v[0]), int(v[0])] if len(v) == 1 else [int(v[0]), int(v[1])]
    return [int(v), int(v)]


def _quint8():
    import torch
    return torch.quint8


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _torch_version():
    import torch
    return torch.__version__
