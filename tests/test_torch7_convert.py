"""Torch7 networks -> PyTorch modules -> Caffe, on both real runtimes.

The ResNet-style network is written as a .t7 file by the fixture writer, read, rebuilt and
converted; its Caffe outputs on OpenCV and on Caffe are compared with a float64 computation of
what Torch7 computes (``torch7_networks.reference``), not with our own PyTorch module.  The unit
tests pin each Torch7 convention (View/Reshape batch rules, pooling size formulas, old fields,
soft-max dimensions, in-place aliasing) and each refusal.
"""
import json

import pytest
import torch
import torch.nn.functional as F

import torch7_fixtures as fx
import torch7_networks as nets
from conversion import capture, run_on, save_both
from tracecap import cli
from tracecap.checkpoint.torch7 import load_torch7
from tracecap.legacy import RevivalError, build_network

TOL = 1e-4


def rebuilt(module_obj, **options):
    return build_network(load_torch7(fx.t7_bytes(module_obj, **options)))


def run(module_obj, x):
    with torch.no_grad():
        return rebuilt(module_obj)(x)


def _input(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class TestResNetStyle:
    def test_pytorch_module_computes_what_torch7_computes(self):
        net = nets.resnet_style(size=64)
        x = _input(2, 3, 64, 64)
        want = nets.reference(net, x.double())
        got = run(net, x)
        assert got.shape == (2, 10)
        assert float((got.double() - want).abs().max()) < 1e-5

    @pytest.mark.parametrize("options", [{}, {"byteorder": "big"}, {"encoding": "ascii"}])
    def test_every_encoding_gives_the_same_network(self, options):
        net = nets.resnet_style(size=40)
        x = _input(1, 3, 40, 40)
        assert torch.equal(run(net, x), rebuilt(net, **options)(x).detach())

    def test_converts_on_real_runtime(self, runtime, tmp_path):
        net = nets.resnet_style()
        path = tmp_path / "resnet_style.t7"
        path.write_bytes(fx.t7_bytes(net))
        model = build_network(load_torch7(path))
        x = _input(1, 3, 224, 224)
        graph, _ = capture(model, x)
        outs = run_on(runtime, graph, save_both(graph, tmp_path), [x])
        want = nets.reference(net, x.double()).numpy()
        diff = float(abs(outs[0].reshape(want.shape) - want).max())
        print(f"\nTorch7 ResNet-style on {runtime}: max abs diff {diff:.3g} vs the Torch7 reference")
        assert diff <= TOL * max(1.0, float(abs(want).max()))
        types = [n.op for n in graph.nodes]
        assert "conv2d" in types or any("conv" in t for t in types)


def test_cli_convert_t7_end_to_end(tmp_path):
    path = tmp_path / "net.t7"
    path.write_bytes(fx.t7_bytes(nets.resnet_style()))
    rc = cli.main(["convert", str(path), "--input", "1x3x224x224", "-o", str(tmp_path / "out"), "--dialect",
                   "opencv", "--verify", "--quiet"])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "net.json").read_text())
    assert summary["verify"] and all(v["ok"] for v in summary["verify"].values())
    text = (tmp_path / "out" / "net.prototxt").read_text()
    assert text.count('type: "Convolution"') == 6 and 'type: "Softmax"' in text


def inception_style(seed=2):
    """Concat of branches (1x1, 3x3, cudnn max pool + 1x1), cudnn average pooling, Reshape, Tanh, LogSoftMax."""
    g = torch.Generator().manual_seed(seed)

    def branch(*mods):
        return nets.seq(*mods)

    stem = nets.conv(g, 3, 6, 3, 1, 1, "cudnn.SpatialConvolution")
    cat = fx.module("nn.Concat", dimension=2, modules=[
        branch(nets.conv(g, 6, 4, 1)), branch(nets.conv(g, 6, 4, 3, 1, 1)),
        branch(nets.max_pool(3, 1, 1, kind="cudnn.SpatialMaxPooling"), nets.conv(g, 6, 4, 1))])
    pool = fx.module("cudnn.SpatialAveragePooling", kW=2, kH=2, dW=2, dH=2, padW=0, padH=0, ceil_mode=False,
                     count_include_pad=True)
    reshape = fx.module("nn.Reshape", size=fx.Storage([12 * 8 * 8], dtype=torch.int64), nelement=768,
                        batchsize=fx.Storage([1, 768], dtype=torch.int64))
    return fx.module("nn.Sequential", modules=[stem, fx.module("cudnn.ReLU", inplace=True), cat, pool, reshape,
                                                nets.linear(g, 768, 7), fx.module("nn.Tanh"),
                                                fx.module("nn.LogSoftMax")])


def test_inception_style_on_real_runtime(runtime, tmp_path):
    model = rebuilt(inception_style())
    x = _input(1, 3, 16, 16)
    graph, eager = capture(model, x)
    got = run_on(runtime, graph, save_both(graph, tmp_path), [x])[0]
    want = eager.numpy()
    assert float(abs(got.reshape(want.shape) - want).max()) <= TOL * max(1.0, float(abs(want).max()))


class TestConventions:
    def test_view_batch_rules(self):
        def view(sizes, n=None, **extra):
            fields = {"size": fx.Storage(sizes, dtype=torch.int64)}
            if n is not None:
                fields["numInputDims"] = n
            return rebuilt(fx.module("nn.View", **fields))
        assert view([36], 3)(torch.zeros(2, 4, 3, 3)).shape == (2, 36)  # numInputDims: the rest is the batch
        assert view([36], 3)(torch.zeros(4, 3, 3)).shape == (36,)
        assert view([-1])(torch.zeros(2, 4, 3)).shape == (24,)  # -1: no batch inferred
        assert view([6])(torch.zeros(2, 3, 6)).shape == (6, 6)  # element count: 36 / 6 = a batch of 6
        assert view([3, -1], 2)(torch.zeros(5, 3, 4)).shape == (5, 3, 4)
        with pytest.raises(RevivalError, match="do not match"):
            view([5])(torch.zeros(2, 3))

    def test_reshape_guesses_the_batch_like_torch7(self):
        def reshape(sizes, mode=None):
            fields = {"size": fx.Storage(sizes, dtype=torch.int64)}
            if mode is not None:
                fields["batchMode"] = mode
            return rebuilt(fx.module("nn.Reshape", **fields))
        assert reshape([12])(torch.zeros(3, 4)).shape == (12,)  # all elements, first size not 1: one sample
        assert reshape([12])(torch.zeros(1, 12)).shape == (1, 12)  # first size 1: a batch of one
        assert reshape([6])(torch.zeros(2, 2, 3)).shape == (2, 6)
        assert reshape([12], False)(torch.zeros(1, 3, 4)).shape == (12,)

    def test_pooling_size_rules_and_refusals(self):
        x = _input(1, 2, 5, 5)
        torch7_only = fx.module("nn.SpatialMaxPooling", kW=1, kH=1, dW=3, dH=3, padW=0, padH=0, ceil_mode=True)
        with pytest.raises(RevivalError, match="Torch7 \\(nn\\) pooling gives 3x3 on 5x5 .* PyTorch gives 2x2"):
            run(torch7_only, x)
        past_pad = fx.module("cudnn.SpatialAveragePooling", kW=2, kH=2, dW=2, dH=2, padW=0, padH=0, ceil_mode=True)
        with pytest.raises(RevivalError, match="cudnn average pooling with a window past the padded input"):
            run(past_pad, x)
        ceil = fx.module("nn.SpatialMaxPooling", kW=2, kH=2, dW=2, dH=2, padW=0, padH=0, ceil_mode=True)
        assert torch.equal(run(ceil, x), F.max_pool2d(x, 2, 2, ceil_mode=True))
        old = fx.module("nn.SpatialMaxPooling", kW=3, kH=3, dW=2, dH=2)  # before padW/ceil_mode existed
        assert torch.equal(run(old, x), F.max_pool2d(x, 3, 2))

    def test_average_pooling_divisors(self):
        x = _input(1, 2, 6, 6)
        summed = fx.module("nn.SpatialAveragePooling", kW=2, kH=2, dW=2, dH=2)  # saved before `divide`
        assert torch.allclose(run(summed, x), F.avg_pool2d(x, 2) * 4, atol=1e-6)
        exclude = fx.module("nn.SpatialAveragePooling", kW=3, kH=3, dW=2, dH=2, padW=1, padH=1, ceil_mode=False,
                            count_include_pad=False, divide=True)
        ones = run(exclude, torch.ones(1, 1, 6, 6))
        assert torch.allclose(ones, torch.ones_like(ones))  # only real elements are counted
        include = fx.module("cudnn.SpatialAveragePooling", kW=3, kH=3, dW=2, dH=2, padW=1, padH=1,
                            ceil_mode=False, count_include_pad=False)  # cudnn.torch always counts the padding
        assert torch.allclose(run(include, torch.ones(1, 1, 6, 6))[0, 0, 0, 0], torch.tensor(4 / 9))

    def test_dropout_versions(self):
        x = _input(2, 5)
        assert torch.equal(run(nets.dropout(0.3, v2=True), x), x)
        assert torch.allclose(run(nets.dropout(0.3, v2=False), x), x * 0.7)  # v1 scaled at test time
        assert torch.allclose(run(fx.module("nn.Dropout", p=0.2), x), x * 0.8)  # no v2 field: v1
        spatial = fx.module("nn.SpatialDropout", p=0.25)
        assert torch.allclose(run(spatial, _input(1, 2, 3, 3)), _input(1, 2, 3, 3) * 0.75)

    def test_softmax_dimensions(self):
        x4, x3 = _input(2, 3, 4, 5), _input(3, 4, 5)
        assert torch.allclose(run(fx.module("nn.SoftMax"), x4), F.softmax(x4, 1))
        assert torch.allclose(run(fx.module("nn.SoftMax"), x3), F.softmax(x3, 0))
        instance = run(fx.module("cudnn.SoftMax"), x4)
        assert torch.allclose(instance, F.softmax(x4.reshape(2, -1), 1).reshape(x4.shape))
        assert torch.allclose(run(fx.module("cudnn.SpatialSoftMax"), x4), F.softmax(x4, 1))

    def test_join_and_concat_dimensions(self):
        a, b = _input(2, 3, 4), _input(2, 5, 4, seed=2)
        table = fx.module("nn.ConcatTable", modules=[fx.module("nn.Identity"), fx.module("nn.Identity")])
        join = fx.module("nn.JoinTable", dimension=1, nInputDims=2)  # 3-D input = a batch of 2-D
        net = fx.module("nn.Sequential", modules=[table, join])
        assert run(net, a).shape == (2, 6, 4)
        concat = fx.module("nn.Concat", dimension=2, modules=[fx.module("nn.Identity"), fx.module("nn.Tanh")])
        assert torch.allclose(run(concat, b), torch.cat([b, torch.tanh(b)], 1))

    def test_in_place_relu_changes_the_identity_branch_as_in_torch7(self):
        x = _input(1, 2, 3, 3)
        branch = fx.module("nn.Sequential", modules=[fx.module("nn.ReLU", inplace=True, threshold=0, val=0)])
        block = fx.module("nn.Sequential", modules=[
            fx.module("nn.ConcatTable", modules=[branch, fx.module("nn.Identity")]),
            fx.module("nn.CAddTable", inplace=True)])
        assert torch.allclose(run(block, x), 2 * x.clamp(min=0))

    def test_old_fields(self):
        g = torch.Generator().manual_seed(4)
        w = torch.randn(2, 3, 3, 3, generator=g)
        conv = fx.module("nn.SpatialConvolution", nInputPlane=3, nOutputPlane=2, kW=3, kH=3, dW=1, dH=1, padding=1,
                         weight=w.reshape(2, 27), bias=torch.zeros(2))  # old `padding`, 2-D weight
        x = _input(1, 3, 5, 5)
        assert torch.allclose(run(conv, x), F.conv2d(x, w, padding=1), atol=1e-6)
        thresh = fx.module("nn.Threshold", threshold=0.5, val=-1.0, inplace=False)
        assert torch.equal(run(thresh, x), torch.where(x > 0.5, x, torch.tensor(-1.0)))

    def test_unsupported_modules_are_all_listed(self):
        net = fx.module("nn.Sequential", modules=[
            fx.module("nn.Identity"), fx.module("nn.SpatialFractionalMaxPooling"),
            fx.module("nn.Sequential", modules=[fx.module("nn.LSTM")])])
        with pytest.raises(RevivalError) as err:
            rebuilt(net)
        text = str(err.value)
        assert "2 Torch7 module(s) have no PyTorch equivalent" in text
        assert "nn.SpatialFractionalMaxPooling at 2" in text and "nn.LSTM at 3.1" in text

    def test_a_table_without_a_module_is_refused_by_convert(self, tmp_path, capsys):
        path = tmp_path / "data.t7"
        path.write_bytes(fx.t7_bytes({"mean": [0.5, 0.4], "std": 0.2}))
        rc = cli.main(["convert", str(path), "--input", "1x3x8x8", "-o", str(tmp_path / "out"), "--quiet"])
        assert rc == 2 and "is a Torch7 file holding" in capsys.readouterr().err
