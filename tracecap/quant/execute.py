"""``execute``: run a quantized program in numpy and return the integer codes PyTorch computes.

The program comes from ``export``'s files (a directory or its manifest.json), a captured graph or
a loaded ``Program``. Inputs are float arrays (or torch tensors) of the captured shapes; the batch
dimension may differ. A graph output that PyTorch dequantizes (and maybe post-processes in float,
e.g. a softmax) is returned as the integer codes before the dequantize - what a hardware engine
produces - as ``np.uint8`` (quint8) or ``np.int8`` (qint8); outputs of dynamically quantized
layers are float32, as in PyTorch. ``trace=True`` also returns every tensor by name.

Bit-exactness with PyTorch covers the batch as given: PyTorch's quantized add rounds the last
``n % 64`` elements of each parallel chunk differently, so results depend on how many elements
one call holds and, above 32768 elements, on ``torch.get_num_threads()`` (pass it as
``threads``).
"""
from __future__ import annotations

import numpy as np

from tracecap.quant import manifest as files
from tracecap.quant.errors import QuantError
from tracecap.quant.kernels import KERNELS, Context

_CODE_DTYPES = {"quint8": np.uint8, "qint8": np.int8, "qint32": np.int32}


def execute(source, x, *, mode="pytorch", threads=1, trace=False):
    """Run ``source`` on input ``x`` (an array, or a list/tuple/dict of arrays for several inputs).

    ``mode="integer_only"`` replaces PyTorch's float requantization by int32 bias + fixed-point
    multipliers (see ``kernels``). Returns one array, a tuple of arrays (several outputs), or
    ``(outputs, {tensor name: array})`` with ``trace``.
    """
    program = files.load(source)
    ctx = Context(program, mode=mode, threads=threads)
    env = _bind_inputs(program, x)
    for op in program.ops:
        try:
            args = [env[name] for name in op["inputs"]]
        except KeyError as exc:
            raise QuantError(f"{program.source}: op {op['name']!r} reads {exc.args[0]!r} before any op produces "
                             f"it (ops out of order?)") from None
        outs = KERNELS[op["kind"]](op, args, ctx)
        env.update(zip(op["outputs"], outs))
    results = tuple(_result(program, out, env) for out in program.outputs)
    result = results[0] if len(results) == 1 else results
    if trace:
        return result, {k: _as_stored(program, k, v) for k, v in env.items()}
    return result


def _bind_inputs(program, x):
    specs = program.inputs
    if isinstance(x, dict):
        missing = [s["name"] for s in specs if s["name"] not in x]
        if missing:
            raise QuantError(f"inputs missing: {', '.join(missing)} (the program takes {[s['name'] for s in specs]})")
        values = [x[s["name"]] for s in specs]
    elif isinstance(x, (list, tuple)):
        values = list(x)
    else:
        values = [x]
    if len(values) != len(specs):
        raise QuantError(f"the program takes {len(specs)} input(s) ({', '.join(s['name'] for s in specs)}), "
                         f"got {len(values)}")
    env = {}
    for spec, value in zip(specs, values):
        arr = _to_numpy(value)
        shape = spec.get("shape")
        if shape is not None and (arr.ndim != len(shape) or tuple(arr.shape[1:]) != tuple(shape[1:])):
            raise QuantError(f"input {spec['name']!r} has shape {list(arr.shape)}; the program was captured with "
                             f"{shape} (only the first, batch dimension may differ)")
        if spec["dtype"] == "float32":
            env[spec["name"]] = arr.astype(np.float32, copy=False)
        else:
            if not np.issubdtype(arr.dtype, np.integer):
                raise QuantError(f"input {spec['name']!r} is {spec['dtype']}: pass its integer codes")
            env[spec["name"]] = arr.astype(np.int16)
    return env


def _to_numpy(value):
    try:
        import torch
        if isinstance(value, torch.Tensor):
            value = value.detach()
            value = value.int_repr() if value.is_quantized else value
            return value.cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency, but the executor does not need it
        pass
    return np.asarray(value)


def _as_stored(program, name, value):
    dtype = program.tensors.get(name, {}).get("dtype", "float32")
    if dtype in _CODE_DTYPES:
        return np.asarray(value).astype(_CODE_DTYPES[dtype])
    return np.asarray(value, dtype=np.float32)


def _result(program, out, env):
    return _as_stored(program, out["tensor"], env[out["tensor"]])
