"""Captured graphs have the right ops, attributes, wiring and shapes.

Each case runs a small forward in eager mode and under capture, then replays
the captured graph twice - once by re-calling the recorded targets (wiring,
constants, versions) and once from canonical op names/params alone
(reference_executor) - and compares both with the eager output.
"""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Variable

import tracecap
from tracecap import replay
from tracecap.ops import reference as reference_executor


def _capture(fn, *inputs):
    with torch.no_grad():
        eager = fn(*inputs)
        with tracecap.capture() as cap:
            fn(*inputs)
    return cap.graph, eager


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _check_replay(graph, eager, inputs):
    eager = _as_list(eager)
    for runner in (replay.run, reference_executor.run):
        outs = runner(graph, *inputs)
        assert len(outs) == len(eager)
        for got, want in zip(outs, eager):
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-6, rtol=0), (runner, (got - want).abs().max())


def _m(*layers):
    return nn.Sequential(*layers).eval()


torch.manual_seed(0)
X = torch.randn(2, 4, 9, 9)

# (id, callable, inputs, ops expected in order of appearance (subset), attribute checks {op: {param: value}})
CASES = [
    ("conv", _m(nn.Conv2d(4, 6, 3, stride=2, padding=1)), (X,), ["conv2d"],
     {"conv2d": {"stride": (2, 2), "padding": (1, 1), "groups": 1}}),
    ("conv_depthwise_dilated", _m(nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False)), (X,), ["conv2d"],
     {"conv2d": {"dilation": (2, 2), "groups": 4, "bias": None}}),
    ("conv_transpose", _m(nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)), (X,),
     ["conv_transpose2d"], {"conv_transpose2d": {"output_padding": (1, 1)}}),
    ("linear_flatten", _m(nn.Flatten(), nn.Linear(4 * 81, 5)), (X,), ["flatten", "linear"], {}),
    ("batchnorm", _m(nn.BatchNorm2d(4, eps=1e-3)), (X,), ["batch_norm"], {"batch_norm": {"eps": 1e-3}}),
    ("relu_family", _m(nn.ReLU(), nn.LeakyReLU(0.2), nn.ReLU6(), nn.ELU(0.5), nn.Hardtanh(-0.5, 0.7)), (X,),
     ["relu", "leaky_relu", "hardtanh", "elu", "hardtanh"], {"leaky_relu": {"negative_slope": 0.2}}),
    ("prelu", _m(nn.PReLU(4)), (X,), ["prelu"], {}),
    ("pools", _m(nn.MaxPool2d(3, 2, padding=1), nn.AvgPool2d(2, ceil_mode=True)), (X,), ["max_pool2d", "avg_pool2d"],
     {"max_pool2d": {"kernel_size": 3, "stride": 2, "padding": 1}, "avg_pool2d": {"ceil_mode": True}}),
    ("adaptive_pool", _m(nn.AdaptiveAvgPool2d(1)), (X,), ["adaptive_avg_pool2d"], {}),
    ("sigmoid_tanh", lambda x: torch.tanh(torch.sigmoid(x)), (X,), ["sigmoid", "tanh"], {}),
    ("softmax_dims", lambda x: F.softmax(x, dim=1) + F.log_softmax(x, dim=-1), (X,),
     ["softmax", "log_softmax", "add"], {"softmax": {"dim": 1}}),
    ("cat", lambda x: torch.cat([x, x * 2, x[:, :1]], 1), (X,), ["mul", "getitem", "cat"], {"cat": {"dim": 1}}),
    ("add_mul_scalar_tensor", lambda x, y: (x + y) * 3 - y / 2 + 1 - x * y, (X, torch.randn(2, 4, 9, 9)),
     ["add", "mul", "div", "sub"], {}),
    ("broadcast_mul", lambda x: x * x.mean((2, 3), keepdim=True), (X,), ["mean", "mul"], {}),
    ("rsub_rdiv", lambda x: 1 - x + 2 / (x.abs() + 1), (X,), ["rsub", "abs", "div"], {}),
    ("view_reshape", lambda x: x.view(x.size(0), -1).reshape(2, 4, 81), (X,), ["view", "reshape"],
     {"view": {"size": (2, -1)}}),
    ("permute_transpose", lambda x: x.permute(0, 2, 3, 1).transpose(1, 2).contiguous(), (X,),
     ["permute", "transpose"], {"permute": {"dims": (0, 2, 3, 1)}}),
    ("getitem_slices", lambda x: x[:, 1:3, ::2, :-1], (X,), ["getitem"], {}),
    ("chunk_split", lambda x: torch.cat(list(reversed(x.chunk(2, 1))) + [t * 1 for t in x.split([1, 3], 1)], 1),
     (X,), ["chunk", "split", "cat"], {"chunk": {"chunks": 2, "dim": 1}}),
    ("upsample_interpolate", lambda x: F.interpolate(x, scale_factor=2, mode="nearest") +
     F.interpolate(x, size=(18, 18), mode="bilinear", align_corners=False), (X,), ["interpolate", "add"],
     {"interpolate": {"scale_factor": 2}}),
    ("pixel_shuffle", _m(nn.PixelShuffle(2)), (X,), ["pixel_shuffle"], {"pixel_shuffle": {"upscale_factor": 2}}),
    ("pad", lambda x: F.pad(x, (1, 2, 0, 1)), (X,), ["pad"], {"pad": {"pad": (1, 2, 0, 1)}}),
    ("mean", lambda x: x.mean(3).mean(2), (X,), ["mean", "mean"], {"mean": {"dim": 3}}),
    ("matmul", lambda x: torch.matmul(x, x.transpose(2, 3)), (X,), ["transpose", "matmul"], {}),
    ("dropout_eval", _m(nn.Dropout(0.5), nn.ReLU()), (X,), ["relu"], {}),
    ("inplace_relu_add", lambda x: F.relu(x * 1, inplace=True).add_(x).relu_(), (X,), ["mul", "relu", "add", "relu"], {}),
    ("iadd", lambda x: _iadd(x), (X,), ["mul", "add"], {}),
    ("clamp", lambda x: x.clamp(-0.5, 0.5), (X,), ["clamp"], {"clamp": {"min": -0.5, "max": 0.5}}),
    ("unsqueeze_squeeze", lambda x: x.unsqueeze(1).squeeze(1) * 2, (X,), ["mul"], {}),
    ("multi_output", lambda x: x.max(1), (X,), ["max"], {}),
    ("hardswish_silu", lambda x: F.hardswish(x) + F.silu(x), (X,), ["hardswish", "silu", "add"], {}),
    ("stack", lambda x: torch.stack([x, x + 1], 1), (X,), ["add", "stack"], {}),
    ("interpolate_recompute", lambda x: F.interpolate(x, scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
     (X,), ["interpolate"], {"interpolate": {"recompute_scale_factor": True}}),
    ("max_pool_indices_unpool", lambda x: F.max_unpool2d(*F.max_pool2d(x[:, :, :8, :8], 2, return_indices=True), 2),
     (X,), ["getitem", "max_pool2d", "max_unpool2d"], {"max_pool2d": {"return_indices": True},
                                                      "max_unpool2d": {"kernel_size": 2, "output_size": None}}),
    ("adaptive_max_indices", lambda x: F.adaptive_max_pool2d(x, 3, return_indices=True), (X,),
     ["adaptive_max_pool2d"], {"adaptive_max_pool2d": {"return_indices": True}}),
]


def _iadd(x):
    y = x * 2
    y += x
    return y


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_captured_and_replays(case):
    _, fn, inputs, expected_ops, attrs = case
    graph, eager = _capture(fn, *inputs)
    ops = [n.op for n in graph.nodes]
    it = iter(ops)
    assert all(op in it for op in expected_ops), f"expected {expected_ops} in order within {ops}"
    for op, checks in attrs.items():
        node = next(n for n in graph.nodes if n.op == op)
        for key, want in checks.items():
            got = node.params[key]
            if isinstance(want, tuple) and isinstance(got, int):
                got = (got,) * len(want)
            assert got == want, f"{op}.{key}: {got!r} != {want!r}"
    # shapes recorded on tops match what eager produced for outputs
    for blob, want in zip(graph.outputs, _as_list(eager)):
        assert blob.shape == tuple(want.shape)
    _check_replay(graph, eager, inputs)
    graph.lint()


def test_kinds_covered():
    kinds = set()
    for case in CASES:
        graph, _ = _capture(case[1], *case[2])
        kinds.update(n.op for n in graph.nodes)
    assert len(kinds) >= 25, sorted(kinds)


def test_wiring_of_residual_block():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.conv2(out)
            out += x
            return self.relu(out)

    block = Block().eval()
    graph, eager = _capture(block, X)
    names = [n.name for n in graph.nodes]
    assert names == ["conv1", "bn1", "relu", "conv2", "add", "relu_1"]
    conv1, bn1, relu, conv2, add, relu2 = graph.nodes
    assert [b.name for b in conv1.bottoms] == ["x", "conv1.weight", "conv1.bias"]
    assert bn1.bottoms[0] is conv1.tops[0]
    assert relu.bottoms[0] is bn1.tops[0] and relu.tops[0].name == "bn1@1"   # in-place: a new version
    assert conv2.bottoms[0] is relu.tops[0]
    assert add.bottoms == [conv2.tops[0], graph.inputs[0]] and add.tops[0].name == "conv2@1"
    assert relu2.bottoms[0] is add.tops[0] and graph.outputs == relu2.tops
    assert all(n.meta["source"].endswith(f"test_capture_ops.py:{_line_of('return self.relu(out)')}")
               for n in [relu2])
    assert conv1.meta["module"] == "Conv2d" and conv1.scope == "conv1"
    _check_replay(graph, eager, (X,))


def _line_of(text):
    with open(__file__) as f:
        for i, line in enumerate(f, 1):
            if text in line:
                return i
    raise AssertionError(text)


# ---- functional style: weights passed as a dict -------------------------------------------------
def functional_net(x, params):
    x = F.conv2d(x, params["conv.w"], params["conv.b"], padding=1)
    x = F.batch_norm(x, params["bn.mean"], params["bn.var"], params["bn.w"], params["bn.b"], False, 0.0, 1e-5)
    x = F.relu(x)
    x = F.max_pool2d(x, 2)
    x = x.view(x.size(0), -1)
    return F.linear(x, params["fc.w"], params["fc.b"])


def _functional_params():
    g = torch.Generator().manual_seed(1)
    return {"conv.w": torch.randn(6, 4, 3, 3, generator=g), "conv.b": torch.randn(6, generator=g),
            "bn.mean": torch.randn(6, generator=g), "bn.var": torch.rand(6, generator=g) + 0.5,
            "bn.w": torch.randn(6, generator=g), "bn.b": torch.randn(6, generator=g),
            "fc.w": torch.randn(3, 6 * 16, generator=g), "fc.b": torch.randn(3, generator=g)}


def test_functional_style_weights_are_params_not_inputs():
    params = _functional_params()
    x = torch.randn(2, 4, 8, 8)
    graph, eager = _capture(functional_net, x, params)
    assert [b.name for b in graph.inputs] == ["x"]
    assert [n.op for n in graph.nodes] == ["conv2d", "batch_norm", "relu", "max_pool2d", "view", "linear"]
    param_names = sorted(graph.params)
    assert "params.conv.w" in param_names and "params.fc.b" in param_names
    assert torch.equal(graph.params["params.conv.w"], params["conv.w"])
    _check_replay(graph, eager, (x,))


# ---- old style: Variable, volatile, .data, F.upsample ---------------------------------------------
class OldStyleNet(nn.Module):
    def __init__(self):
        super(OldStyleNet, self).__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 9 * 9, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = F.upsample(x, scale_factor=1)
        x = F.sigmoid(x) * F.tanh(x)
        x = x.view(x.size(0), -1)
        return F.softmax(self.fc(x), dim=1)


def test_old_style_variable_volatile():
    net = OldStyleNet().eval()
    x = torch.randn(1, 4, 9, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = net(Variable(x, volatile=True))
        with tracecap.capture() as cap:
            y = net(Variable(x, volatile=True))
    graph = cap.graph
    assert torch.equal(y, eager)
    assert len(graph.inputs) == 1 and graph.inputs[0].shape == (1, 4, 9, 9)
    assert [n.op for n in graph.nodes] == ["conv2d", "relu", "interpolate", "sigmoid", "tanh", "mul", "view",
                                          "linear", "softmax"]
    _check_replay(graph, eager, (x,))


def test_implicit_softmax_dim_is_resolved_like_torch():
    x = torch.randn(3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph, eager = _capture(lambda t: F.softmax(t), x)
    node = graph.nodes[0]
    assert node.params["dim"] == 1 and node.params["implicit_dim"] is True
    _check_replay(graph, eager, (x,))


def test_variable_of_data_inside_forward_is_an_alias():
    def fn(x):
        y = x * 2
        z = Variable(y.data)  # 2017 idiom: detach through .data and rewrap
        return z + 1
    x = torch.randn(2, 3)
    graph, eager = _capture(fn, x)
    assert [n.op for n in graph.nodes] == ["mul", "add"]
    assert graph.nodes[1].bottoms[0] is graph.nodes[0].tops[0]
    _check_replay(graph, eager, (x,))
