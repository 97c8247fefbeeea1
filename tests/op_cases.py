"""Per-op test cases in one format, and the record the README's op table is generated from.

A ``Case`` is converted, run on a real runtime and compared with eager PyTorch (``run_case``);
a ``Refusal`` must be refused with ``UnsupportedOpError`` whose reason matches (``run_refusal``).
With ``TRACECAP_OP_REPORT=path.jsonl`` in the environment every run appends one JSON line:
the ops in the captured graph, the case id, the runtime, "exact" (with the max abs diff, the
scale it is measured against and the number of Caffe layers) or "refused" (with the reason).
``tools/op_table.py`` turns those lines and the mapper registry into the README's table.
"""
from __future__ import annotations

import json
import os
import re
from typing import NamedTuple

import pytest
import torch

import tracecap
from tracecap.mappers import caffe

from conversion import capture, check


class Fn(torch.nn.Module):
    """A function as a module: ``Fn(lambda a, b: a * b)``; its tensor arguments are the graph inputs."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


class Case(NamedTuple):
    id: str
    model: object            # module or callable
    inputs: tuple
    layer_types: frozenset = frozenset()   # Caffe types the opencv prototxt must contain
    rel_tol: float = 1e-5
    ops: tuple = None        # the ops the case is about (default: every op of its graph)


class Refusal(NamedTuple):
    id: str
    model: object
    inputs: tuple
    match: str               # regex the refusal reason must match


def case(id, model, inputs, layer_types=(), rel_tol=1e-5, ops=None):
    """One op x configuration. ``ops`` names the ops it tests when its graph has helpers too
    (a ``sigmoid`` that only makes a gate); the op table counts the case for those ops only."""
    return Case(id, model, tuple(inputs), frozenset(layer_types), rel_tol, tuple(ops) if ops else None)


def ids(cases):
    return [c.id for c in cases]


def _record(entry):
    path = os.environ.get("TRACECAP_OP_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")


def _ops(graph):
    return sorted({n.op for n in graph.nodes})


def _layer_types(graph):
    """{op: sorted Caffe layer types its nodes were written as} (opencv dialect)."""
    types = {}
    for layer in caffe.to_layers(graph, "opencv"):
        types.setdefault(layer.origin.op, set()).add(layer.type)
    return {op: sorted(t) for op, t in types.items()}


def run_case(c, runtime, tmp_path):
    """Convert ``c`` in both dialects, run it on ``runtime``, compare with PyTorch; return the graph."""
    graph, worst = check(c.model, c.inputs, runtime, tmp_path, rel_tol=c.rel_tol)
    text = (tmp_path / "net.opencv.prototxt").read_text()
    for layer_type in c.layer_types:
        assert f'type: "{layer_type}"' in text, f"{layer_type} not in the prototxt"
    if c.ops:
        assert set(c.ops) <= set(_ops(graph)), f"case {c.id} is about {c.ops}, its graph has {_ops(graph)}"
    if os.environ.get("TRACECAP_OP_REPORT"):
        _record({"case": c.id, "ops": list(c.ops) if c.ops else _ops(graph), "runtime": runtime, "status": "exact",
                 "max_abs_diff": worst, "layers": text.count("layer {") - len(graph.inputs),
                 "layer_types": _layer_types(graph)})
    return graph


def run_refusal(r, tmp_path=None):
    """Capture ``r`` and check that conversion is refused, naming the op and the reason."""
    graph, _ = capture(r.model, *r.inputs)
    with pytest.raises(tracecap.UnsupportedOpError) as info:
        caffe.to_net(graph, "opencv")
    err = info.value
    assert err.refusals, "an UnsupportedOpError must name the refused nodes"
    reasons = [why for _, why in err.refusals]
    assert any(re.search(r.match, why) for why in reasons), f"no refusal matches {r.match!r}: {reasons}"
    for node, why in err.refusals:
        assert node.source != "?" and ":" in node.source, f"refusal of {node.op} has no source line"
        _record({"case": r.id, "ops": [node.op], "runtime": None, "status": "refused", "reason": why})
    return err
