"""Weak tensor identity under stress: CPython and the allocator reuse the id()s and buffers of dead
tensors during a capture, and no later tensor may be linked to a dead one's blob.

Each model converts and runs on both real runtimes against PyTorch. The churn tests first check that
reuse really happened during their capture (otherwise they would prove nothing).
"""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tracecap
from conversion import check

torch.manual_seed(17)


def _reuse(fn, *inputs):
    """(ids reused, buffers reused, results still alive, results) over the recorded op results: a
    reused id shows as two refs with one ``tid`` (none when the recorder wrongly merged them)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with tracecap.capture() as cap:
            fn(*inputs)
    refs = {r.key: r for ev in cap.recorder.events for r in ev.outputs}.values()
    weak = [r for r in refs if r.held is None]
    ids = len(refs) - len({r.tid for r in refs})
    buffers = len(weak) - len({r.alias_key()[0] for r in weak})
    alive = sum(r.tensor is not None for r in weak)
    return ids, buffers, alive, len(refs)


class _Looped(nn.Module):
    """A convolution, then ``steps`` rounds of the subclass's loop body."""

    def __init__(self, steps, channels=4, kernel=3):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel, padding=kernel // 2)
        self.steps = steps


class Churn(_Looped):
    """Thousands of same-sized temporaries, each dead one iteration later."""

    def forward(self, x):
        acc = self.conv(x)
        for i in range(self.steps):
            t = torch.relu(acc * 0.5 - 0.1)
            acc = acc + t * (0.01 * (i % 7))
        return acc


class InplaceOnReused(_Looped):
    """In-place writes on fresh temporaries whose ids (and buffers) belonged to tensors that were
    themselves written in place (they had version blobs x@1, x@2) and then died."""

    def forward(self, x):
        acc = self.conv(x)
        for i in range(self.steps):
            t = acc * 1.0
            t.add_(0.05 * (i % 5)).relu_()
            t.mul_(0.5)
            acc = acc * 0.5 + t
        return acc


class ViewsOfFreedBases(_Looped):
    """Channel slices and reshapes of temporaries whose names are dropped at once; some are written
    in place through the view (the unnamed base changes with it) and read again."""

    def forward(self, x):
        h = self.conv(x)
        acc = h[:, :2] * 0.0
        for i in range(self.steps):
            v = (h * (1.0 + 0.01 * i))[:, 2:4]   # the product lives on only through its view
            if i % 2:
                v.relu_()
            flat = v.reshape(v.shape[0], -1)
            acc = acc + flat.reshape(v.shape) * 0.1
        return acc


class Memo(nn.Module):
    """DenseNet-style feature lists, plus tensors kept on ``self`` across calls: a list of past outputs
    and an attribute the next call reads."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3 + 4 * i, 4, 3, padding=1) for i in range(3)])
        self.history = []
        self.last = None

    def forward(self, x):
        feats = [x]
        for conv in self.convs:
            feats.append(F.relu(conv(torch.cat(feats, 1))))
        out = torch.cat(feats[1:], 1)
        if self.history:
            out = out + self.history[-1] * 0.5
        if self.last is not None:
            out = out - self.last
        self.history.append(out)
        self.last = out[:, :4].repeat(1, 3, 1, 1) * 0.25
        return out


def _twice(memo):
    def fn(x):
        memo.history.clear()
        memo.last = None
        memo(x)
        second = memo(x * 0.5)     # reads the first call's output from self.history and self.last
        # (* 1.0: the result itself also feeds self.last, and a consumed blob is not taken for an output)
        return memo(second[:, :3].contiguous()) * 1.0
    return fn


X = torch.randn(1, 3, 8, 8)


@pytest.mark.parametrize("model", [Churn(1200), InplaceOnReused(400, kernel=1)], ids=["churn", "inplace"])
def test_dead_ids_and_buffers_are_reused_and_never_linked(model, runtime, tmp_path):
    model.eval()
    ids, buffers, alive, total = _reuse(model, X)
    assert ids > total // 10, f"only {ids} ids seen reused among {total} results (no reuse, or refs merged)"
    assert buffers > total // 10, f"only {buffers} buffers reused among {total} results"
    assert alive < 10, f"{alive} activations are still alive after the capture"
    graph, _ = check(model, [X], runtime, tmp_path)
    for prev, node in zip(graph.nodes, graph.nodes[1:]):
        assert node.bottoms, node


def test_views_of_freed_bases(runtime, tmp_path):
    model = ViewsOfFreedBases(150, channels=6).eval()
    ids, _, _, total = _reuse(model, X)
    assert ids > 0
    check(model, [X], runtime, tmp_path)


def test_tensors_kept_in_containers_across_calls(runtime, tmp_path):
    fn = _twice(Memo().eval())
    ids, _, _, total = _reuse(fn, X)
    assert ids > 0, "no id reused between the calls"
    graph, _ = check(fn, [X], runtime, tmp_path)
    assert len(graph.outputs) == 1 and len(graph.inputs) == 1
    assert not any(b.kind == "const" for b in graph.blobs.values()), "a tensor kept across calls was frozen"


_CONST = torch.full((1, 4, 8, 8), 0.25)


def _fresh_constants(x):
    """Each step drops an activation, then gets a tensor no recorded op made (``copy.deepcopy`` runs
    torch from the stdlib, which tracecap does not record) that often lands in the dead one's buffer,
    with its shape and strides: it must not be taken for an alias of the dead activation."""
    import copy
    out = x * 1.0
    for _ in range(40):
        dead = out + 1.0
        del dead
        out = out + copy.deepcopy(_CONST)
    return out


def test_tensor_in_a_dead_activations_buffer_is_no_alias_of_it():
    from tracecap import replay
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eager = _fresh_constants(x)
        with tracecap.capture() as cap:
            _fresh_constants(x)
        graph = cap.graph
        (out,) = replay.run(graph, x)
    assert torch.equal(out, eager)
    weak = [r for ev in cap.recorder.events for r in ev.outputs if r.held is None]
    dead_ptrs = {r.alias_key()[0] for r in weak if r.tensor is None}
    consts = [b for b in graph.blobs.values() if b.kind == "const"]
    assert any(b.value.data_ptr() in dead_ptrs for b in consts), "no constant landed in a dead buffer"
