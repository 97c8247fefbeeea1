"""Writes through views and shape-only constants: what the builder follows, and what it refuses.

``tracecap.views`` says how one strided tensor indexes another; the builder uses it to give every
tensor on a written storage its new value. Each capture is checked against eager PyTorch by
replaying the graph (recorded calls, and the reference executor that sees only op + params).
"""
import random

import pytest
import torch

import tracecap
from tracecap import replay, views
from tracecap.ops import reference


def _capture(fn, *inputs):
    with torch.no_grad():
        eager = fn(*[x.clone() for x in inputs])
        with tracecap.capture() as cap:
            fn(*inputs)
    return cap.graph, eager


def _replays(graph, eager, *inputs):
    for run in (replay.run, reference.run):
        (out,) = run(graph, *inputs)
        assert torch.equal(out, eager), run


# ---- tracecap.views ------------------------------------------------------------------------------
def test_index_within_finds_chunks_steps_and_ints():
    x = torch.randn(2, 6, 5, 7)
    lay = views.layout
    assert views.index_within(lay(x), lay(x.chunk(2, 1)[1])) == (slice(None), slice(3, 6), slice(None), slice(None))
    assert views.index_within(lay(x), lay(x[:, ::2, 1:])) == (slice(None), slice(0, 5, 2), slice(1, 5), slice(None))
    assert views.index_within(lay(x), lay(x[1, :, 3])) == (1, slice(None), 3, slice(None))
    assert views.index_within(lay(x), lay(x.transpose(2, 3)[:, :, :2])) is None
    assert views.index_within(lay(x[:, :3]), lay(x[:, 2:])) is None  # overlapping, not inside


def test_overlap_and_reshape_relations():
    x = torch.randn(2, 6, 5)
    a, b = x.chunk(2, 1)
    assert not views.overlaps(views.layout(a), views.layout(b))   # interleaved in memory, yet disjoint
    assert views.overlaps(views.layout(x[:, 2:4]), views.layout(a))
    assert views.same_elements(views.layout(x), views.layout(x.view(2, -1)))
    assert not views.same_elements(views.layout(x), views.layout(x.transpose(0, 1)))


# ---- the builder follows writes -----------------------------------------------------------------
def test_write_to_a_chunk_updates_the_base_and_spares_the_sibling():
    def f(x):
        y = x * 1
        a, b = y.chunk(2, 1)
        a.mul_(3)
        return torch.cat([y, b], 1)   # the base changed where a lies; b did not
    x = torch.randn(2, 4, 3)
    graph, eager = _capture(f, x)
    assert [n.op for n in graph.nodes] == ["mul", "chunk", "mul", "setitem", "cat"]
    _replays(graph, eager, x)


def test_write_to_the_base_updates_its_views():
    def f(x):
        y = x * 1
        a = y[:, 1:3]
        y.relu_()
        return a * 2          # a is a slice of the relu'd y
    x = torch.randn(2, 4, 3)
    graph, eager = _capture(f, x)
    assert [n.op for n in graph.nodes] == ["mul", "relu", "getitem", "mul"]
    _replays(graph, eager, x)


def test_write_through_a_reshaped_view():
    def f(x):
        y = x * 1
        y.view(-1)[:5].add_(1)
        return y
    x = torch.randn(2, 4, 3)
    graph, eager = _capture(f, x)
    assert "setitem" in [n.op for n in graph.nodes] and "reshape" in [n.op for n in graph.nodes]
    _replays(graph, eager, x)


def test_set_on_a_batch1_chunk_keeps_the_base():
    """contiguous() of a batch-1 channel chunk is the chunk: set_() bumps the base's version only."""
    def f(x):
        y = x * 2
        a, b = y.chunk(2, 1)
        a, b = a.contiguous(), b.contiguous()
        out = a + b
        a.set_()
        b.set_()
        return torch.cat([out, y.data], 1)
    x = torch.randn(1, 4, 3)
    graph, eager = _capture(f, x)
    _replays(graph, eager, x)


def test_unsurfaced_writes_are_still_refused_next_to_a_set():
    def f(x):
        y = x * 1
        y[:2].set_()               # explains one bump ...
        random.shuffle(y[2:])      # ... not these: random.py is stdlib code, its writes are not recorded
        return y + 1
    random.seed(0)
    with torch.no_grad(), tracecap.capture() as cap:
        f(torch.randn(9))
    with pytest.raises(tracecap.CaptureError, match=r"op `add` .* reads `mul` after it was modified in place by code "
                                                     r"tracecap could not follow"):
        cap.graph


# ---- shape-only ops are constants ------------------------------------------------------------------
def test_zeros_like_and_fill_are_constants_with_their_values():
    def f(x):
        h = torch.zeros_like(x)
        c = x.new_full((3,), 2.0)
        h.add_(x)             # h becomes an activation; its first version stays zeros
        return h * c
    x = torch.randn(2, 3)
    graph, eager = _capture(f, x)
    assert [n.op for n in graph.nodes] == ["add", "mul"]
    zeros = graph.nodes[0].params["input"]
    assert zeros.is_constant and torch.equal(zeros.value, torch.zeros(2, 3))
    assert torch.equal(graph.nodes[1].params["other"].value, torch.full((3,), 2.0))
    _replays(graph, eager, x)


def test_expand_as_of_a_constant_is_a_constant():
    def f(x):
        return x + torch.ones(1, 3).expand_as(x)
    x = torch.randn(2, 3)
    graph, eager = _capture(f, x)
    assert [n.op for n in graph.nodes] == ["add"] and graph.nodes[0].params["other"].is_constant
    _replays(graph, eager, x)
