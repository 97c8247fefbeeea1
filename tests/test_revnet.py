"""Reversible-block networks (RevNet, i-RevNet) as their public code writes them, converted exactly.

What the blocks really compute is y1 = x1 + F(x2), y2 = x2 + G(y1), cat(y1, y2). Around that, the
memory-saving code of the 2017-2019 implementations writes in place:
- ``set_()`` on the chunks (and ``x.data.set_()``, ``x.storage().resize_(0)``) to free memory. With
  batch 1, ``contiguous()`` of a channel chunk is the chunk itself, a view of x; ``set_()`` then bumps
  the version counter it shares with x without writing anything (torch does not surface ``set_`` as
  an op), and tracecap used to take that for a write it could not follow. The builder now checks that
  views of x were rebound (``_explained_by_set``) and keeps x's value.
- the coupling computed into the input's own storage (``x1 += F(x2)`` on chunks, ``y[:, :c] = ...``
  on a clone, ``x1.copy_(...)``): the builder follows each write through the view to the tensors
  sharing its storage (``setitem``/``getitem`` nodes), and the mappers write them as Slice + Concat.
"""
import pytest
import torch
import torch.nn as nn

import tracecap
from conversion import check
from tracecap import replay

torch.manual_seed(1707)


def _body(c):
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1, bias=False))


class _Coupling(torch.autograd.Function):
    """An autograd Function's forward as pytorchcv's and memcnn's RevNets write it (backward omitted)."""

    @staticmethod
    def forward(ctx, x, f, g, *params):
        with torch.no_grad():
            x1, x2 = torch.chunk(x, 2, dim=1)
            x1, x2 = x1.contiguous(), x2.contiguous()
            y1 = x1 + f(x2)
            x1.set_()                       # free x1 as soon as y1 exists
            y2 = x2 + g(y1)
            x2.set_()
            y = torch.cat([y1, y2], dim=1)
            y1.set_()
            y2.set_()
        return y


class FunctionBlock(nn.Module):
    """pytorchcv-style: the Function, then ``x.data.set_()`` on the input."""

    def __init__(self, c):
        super().__init__()
        self.f, self.g = _body(c // 2), _body(c // 2)

    def forward(self, x):
        y = _Coupling.apply(x, self.f, self.g, *self.f.parameters(), *self.g.parameters())
        x.data.set_()
        return y


class FreeingBlock(FunctionBlock):
    """memcnn-style (keep_input=False): the Function, then the input's storage resized to nothing."""

    def forward(self, x):
        y = _Coupling.apply(x, self.f, self.g, *self.f.parameters(), *self.g.parameters())
        x.untyped_storage().resize_(0)
        return y


class InPlaceBlock(nn.Module):
    """The coupling written into the input's storage through its chunks."""

    def __init__(self, c):
        super().__init__()
        self.f, self.g = _body(c // 2), _body(c // 2)

    def forward(self, x):
        x1, x2 = x.chunk(2, 1)
        x1 += self.f(x2)
        x2.add_(self.g(x1))
        return x


class CloneSetitemBlock(nn.Module):
    """The coupling written into a clone by slice assignment."""

    def __init__(self, c):
        super().__init__()
        self.f, self.g, self.c = _body(c // 2), _body(c // 2), c // 2

    def forward(self, x):
        c = self.c
        y = x.clone()
        y[:, :c] = x[:, :c] + self.f(x[:, c:])
        y[:, c:] = x[:, c:] + self.g(y[:, :c])
        return y


class CopyBackBlock(nn.Module):
    """Outputs copied back over the inputs (``x1.copy_(y1)``), then the input returned."""

    def __init__(self, c):
        super().__init__()
        self.f, self.g = _body(c // 2), _body(c // 2)

    def forward(self, x):
        x1, x2 = x.chunk(2, 1)
        y1 = x1 + self.f(x2)
        x1.copy_(y1)
        x2.copy_(x2 + self.g(x1))
        return x


class Psi(nn.Module):
    """i-RevNet's invertible down-sampling: space to depth by 2."""

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, 4 * c, h // 2, w // 2)


class IRevBlock(nn.Module):
    """i-RevNet: the pair travels as a tuple; a block may pad channels with zeros first (injective pad)."""

    def __init__(self, cin, stride, pad=0):
        super().__init__()
        half, self.pad, self.stride = (cin + pad) // 2, pad, stride
        out = half * stride * stride
        self.psi = Psi()
        self.f = nn.Sequential(nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                               nn.Conv2d(half, out, 3, stride=stride, padding=1, bias=False),
                               nn.BatchNorm2d(out), nn.ReLU(inplace=True), nn.Conv2d(out, out, 3, padding=1))

    def forward(self, pair):
        x1, x2 = pair
        if self.pad:
            x = torch.cat([x1, x2], 1)
            x = torch.cat([x, torch.zeros_like(x[:, :self.pad])], 1)
            x1, x2 = x.chunk(2, 1)
        fx2 = self.f(x2)
        if self.stride == 2:
            x1, x2 = self.psi(x1), self.psi(x2)
        return x2, fx2 + x1


class IRevNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(IRevBlock(8, 1), IRevBlock(8, 2, pad=4))

    def forward(self, x):
        x = self.stem(x)
        y1, y2 = self.blocks(x.chunk(2, 1))
        return torch.cat([y1, y2], 1)


def _net(block, c=8):
    m = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), block(c), block(c), nn.BatchNorm2d(c), nn.ReLU())
    return _eval(m)


def _eval(m):
    m.eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


class _Fresh(nn.Module):
    """Gives the model a copy of the input: memory-freeing blocks may empty what they are given."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x * 1)


VARIANTS = [("function_set", FunctionBlock), ("function_resize", FreeingBlock), ("in_place_chunks", InPlaceBlock),
            ("clone_setitem", CloneSetitemBlock), ("copy_back", CopyBackBlock)]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name,block", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_revnet_block_converts_exactly(name, block, batch, runtime, tmp_path):
    model = _Fresh(_net(block))
    x = torch.randn(batch, 3, 9, 7)
    graph, worst = check(model, (x,), runtime, tmp_path, rel_tol=1e-4)
    assert worst < 1e-4
    assert all(n.op != "set" for n in graph.nodes)
    if block in (InPlaceBlock, CloneSetitemBlock, CopyBackBlock):
        assert any(n.op == "setitem" for n in graph.nodes), "the writes into the input must be in the graph"


def test_irevnet_converts_exactly(runtime, tmp_path):
    graph, worst = check(_eval(IRevNet()), (torch.randn(2, 3, 8, 10),), runtime, tmp_path, rel_tol=1e-4)
    assert {"permute", "cat", "chunk"} <= {n.op for n in graph.nodes}


@pytest.mark.parametrize("batch", [1, 3])
def test_in_place_block_replays_to_eager(batch):
    """The graph of the in-place coupling reproduces eager PyTorch through the reference executor too."""
    model = _net(InPlaceBlock)
    x = torch.randn(batch, 3, 6, 5)
    with torch.no_grad():
        eager = model(x.clone())
        with tracecap.capture() as cap:
            model(x.clone())
    from tracecap.ops import reference
    got = reference.run(cap.graph, x)[0]
    assert torch.allclose(got, eager, atol=1e-5)
    assert torch.allclose(replay.run(cap.graph, x)[0], eager, atol=1e-5)


class TransposedWriteBlock(nn.Module):
    """A coupling written through a transposed view of the input: no slice of it."""

    def __init__(self, c):
        super().__init__()
        self.f = _body(c)

    def forward(self, x):
        y = self.f(x)
        y.transpose(2, 3)[..., :2, :].add_(1.0)
        return y * 2


def test_write_through_a_view_that_is_no_slice_is_refused_with_op_and_line():
    model = _net(TransposedWriteBlock)
    with torch.no_grad(), tracecap.capture() as cap:
        model(torch.randn(1, 3, 6, 5))
    with pytest.raises(tracecap.CaptureError,
                       match=r"op `mul` .* reads `[^`]+`, which was changed by op `add_` in module `1` \(TransposedWriteBlock\) "
                             r"at .*test_revnet\.py:\d+ through a view that is no slice"):
        cap.graph
