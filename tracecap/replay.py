"""Re-run a captured graph with torch by calling each node's recorded target.

Used to check a capture (the graph must reproduce the eager output) and to get
the value of every blob by name (``return_env``). A node a pass rewrote has no
recorded call any more (``target`` None) and is computed from its op and params
by ``tracecap.ops.reference``.
"""
from __future__ import annotations

import torch

from tracecap.graph import Blob, map_structure
from tracecap.recorder import _tensors


def _resolve(obj, env):
    """obj with every Blob replaced by its value in ``env``."""
    return map_structure(obj, lambda o: env[o.name] if isinstance(o, Blob) else o)


def run(graph, *inputs, call=None, return_env=False, fallback=None):
    """Execute ``graph`` on ``inputs`` (one tensor per graph input, in order).

    ``call(node, env)`` may replace the default execution (``node.target(*args, **kwargs)``);
    it must return the node's raw result. In-place targets run on clones, so
    every blob version keeps its own value. ``fallback(node, env)``, if given, computes a
    node whose recorded call raises RuntimeError (a pass removed what made it valid, e.g. the
    ``contiguous`` before a ``view``).
    """
    if len(inputs) != len(graph.inputs):
        raise ValueError(f"graph has {len(graph.inputs)} inputs, got {len(inputs)}")
    env = {b.name: b.value for b in graph.blobs.values() if b.is_constant}
    env.update({b.name: x for b, x in zip(graph.inputs, inputs)})
    with torch.no_grad():
        for node in graph.nodes:
            args = ()  # the tensors an in-place target wrote, when it ran here (never a previous node's)
            if call is not None:
                result = call(node, env)
            elif node.target is None:
                from tracecap.ops import reference
                result = reference.call(node, env)
            else:
                args = _resolve(node.args, env)
                kwargs = _resolve(node.kwargs, env)
                if node.meta.get("inplace"):
                    args, kwargs = _clone_written(node, args, kwargs)
                try:
                    result = node.target(*args, **kwargs)
                except RuntimeError:
                    if fallback is None:
                        raise
                    args, result = (), fallback(node, env)
            outs = _tensors(result, [])
            skip = set(node.meta.get("passthrough_outputs", ()))
            produced = [o for k, o in enumerate(outs) if k not in skip]
            if node.meta.get("inplace") and len(produced) < len(node.tops):
                produced += _tensors(args, [])[:len(node.tops) - len(produced)]
            for top, value in zip(node.tops, produced):
                env[top.name] = value
    outs = [env[b.name] for b in graph.outputs]
    return (outs, env) if return_env else outs


def _clone_written(node, args, kwargs):
    """Give an in-place op a private copy of the tensor it writes, so earlier versions survive."""
    args = list(args)
    if args and isinstance(args[0], torch.Tensor):
        args[0] = args[0].clone()
    elif "input" in kwargs and isinstance(kwargs["input"], torch.Tensor):
        kwargs = dict(kwargs, input=kwargs["input"].clone())
    return args, kwargs
