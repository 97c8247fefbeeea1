"""tracecap.legacy.compat: 2017 code fails or computes other numbers today, and gets its 0.3 meaning under
compat - computed here independently of torch's kernels where the semantics changed - with every patch
undone afterwards. The conversions of the same code are in test_legacy_compat_convert.py."""
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Variable

import tracecap
from tracecap.legacy import CompatError, CompatWarning, compat
from tracecap.legacy import compat as compat_module_attr  # the class (the module is shadowed, as capture's)
from tracecap.legacy.compat import PATCHES

from legacy_code import activations_2017, cuda_model, mnist_2017, py2_division, segnet_bilinear

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*upsample.*deprecated")


def _seeded(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _state():
    return [vars(p.owner).get(p.name, "<missing>") for p in PATCHES]


def _compat_warnings(record, text=""):
    return [w for w in record if issubclass(w.category, CompatWarning) and text in str(w.message)]


# ---- the mechanism --------------------------------------------------------------------------------------
def test_nothing_is_patched_outside_a_block_and_everything_is_restored():
    before = _state()
    assert all(vars(p.owner).get(p.name) is not p.replacement for p in PATCHES)
    with compat("0.3"):
        assert any(vars(p.owner).get(p.name) is p.replacement for p in PATCHES)
    assert all(a is b for a, b in zip(before, _state()))
    with pytest.raises(IndexError):
        torch.tensor(1.5)[0]


def test_an_exception_in_the_block_undoes_every_patch():
    before = _state()
    with pytest.raises(ZeroDivisionError):
        with compat():
            1 / 0
    assert all(a is b for a, b in zip(before, _state()))
    assert not torch.overrides._is_torch_function_mode_enabled()


def test_blocks_nest_and_the_same_object_reenters():
    before = _state()
    block = compat("0.3")
    with block:
        with block:
            with compat("0.2"):
                assert torch.tensor(2.0)[0] == 2.0
            assert torch.tensor(2.0)[0] == 2.0  # still active after the inner blocks end
        assert torch.tensor(2.0)[0] == 2.0
    assert all(a is b for a, b in zip(before, _state()))
    with block:
        assert torch.tensor(3.0)[0] == 3.0
    assert all(a is b for a, b in zip(before, _state()))


def test_another_thread_can_open_a_block_too():
    before, errors = _state(), []

    def work():
        try:
            with compat():
                assert torch.tensor(4.0)[0] == 4.0
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    with compat():
        t = threading.Thread(target=work)
        t.start()
        t.join()
        assert torch.tensor(5.0)[0] == 5.0  # the other thread's exit did not undo this block's patches
    assert not errors and all(a is b for a, b in zip(before, _state()))


@pytest.mark.parametrize("version", ["0.4", "1.0", "0.3.x", "latest", ""])
def test_unknown_versions_are_refused_before_anything_changes(version):
    before = _state()
    with pytest.raises(CompatError, match="PyTorch 0.1-0.3"):
        compat(version)
    with pytest.raises(CompatError):
        tracecap.capture(legacy=version)
    assert all(a is b for a, b in zip(before, _state()))
    assert not torch.overrides._is_torch_function_mode_enabled()
    assert [compat(v).version for v in ("0.1", "0.2.0", "0.3.1", 0.3)] == ["0.3"] * 4  # one set of semantics


def test_compat_inside_a_capture_is_refused_and_capture_legacy_orders_itself():
    x = _seeded((2, 3))
    with pytest.raises(CompatError, match="capture\\(legacy='0.3'\\)"):
        with tracecap.capture():
            with compat():
                pass
    with compat():  # compat outside the capture: fine, and capture(legacy=...) nests inside it
        with tracecap.capture(legacy="0.3") as cap:
            torch.relu(x)
    assert [n.op for n in cap.graph.nodes] == ["relu"]
    assert compat_module_attr is compat


# ---- bilinear upsampling ------------------------------------------------------------------------------
def _thnn_axis(n_in, n_out):
    """PyTorch 0.1-0.3 (THNN SpatialUpSamplingBilinear, before align_corners existed): output index o reads
    source position o * (n_in - 1) / (n_out - 1), linearly between its two neighbours."""
    m = np.zeros((n_out, n_in))
    ratio = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for o in range(n_out):
        src = ratio * o
        i0 = int(src)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[o, i0] += 1 - lam
        m[o, i1] += lam
    return m


def thnn_bilinear(x, out_h, out_w):
    mh, mw = _thnn_axis(x.shape[2], out_h), _thnn_axis(x.shape[3], out_w)
    return torch.from_numpy(np.einsum("oh,nchw,pw->ncop", mh, x.double().numpy(), mw))


def test_f_upsample_and_nn_upsample_bilinear_give_the_0_3_numbers_under_compat_only():
    x = _seeded((2, 3, 5, 7))
    old = thnn_bilinear(x, 10, 14)
    calls = {"F.upsample": lambda: F.upsample(x, scale_factor=2, mode="bilinear"),
             "F.upsample size": lambda: F.upsample(x, size=(10, 14), mode="bilinear"),
             "nn.Upsample": lambda: nn.Upsample(scale_factor=2, mode="bilinear")(x)}
    for name, call in calls.items():
        today = call()
        with compat():
            then = call()
        assert (then.double() - old).abs().max() < 1e-5, name
        assert (today.double() - old).abs().max() > 0.05, name  # today's default silently differs
    odd = _seeded((1, 2, 4, 4))
    with compat():
        resized = F.upsample(odd, size=(7, 9), mode="bilinear")
    assert (resized.double() - thnn_bilinear(odd, 7, 9)).abs().max() < 1e-5


def test_linear_and_trilinear_modes_keep_their_old_default_too():
    x = _seeded((1, 2, 5))
    with compat():
        got = segnet_bilinear.Temporal()(x)
    want = torch.from_numpy(np.einsum("ol,ncl->nco", _thnn_axis(5, 15), x.double().numpy()))
    assert (got.double() - want).abs().max() < 1e-5
    v = _seeded((1, 1, 2, 3, 4))
    with compat():
        got = F.upsample(v, scale_factor=2, mode="trilinear")
    assert torch.equal(got, F.interpolate(v, scale_factor=2, mode="trilinear", align_corners=True))


def test_spellings_that_passed_align_corners_themselves_are_unchanged():
    x = _seeded((1, 3, 5, 3))
    model = segnet_bilinear.AlwaysAligned()
    today = model(x)
    with compat():
        then = model(x)
        explicit_false = F.upsample(x, scale_factor=2, mode="bilinear", align_corners=False)
        direct = F.interpolate(x, scale_factor=2, mode="bilinear")  # 0.4.1+ API: today's meaning
    assert torch.equal(today, then)
    assert (then.double() - thnn_bilinear(thnn_bilinear(x, 10, 6).float(), 20, 12)).abs().max() < 1e-5
    assert torch.equal(explicit_false, F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    assert torch.equal(direct, F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def test_the_2017_segmentation_net_computes_its_old_output():
    torch.manual_seed(0)
    net = segnet_bilinear.SegNet().eval()
    x = _seeded((1, 3, 16, 16))
    with torch.no_grad():
        today = net(x)
        with compat():
            then = net(x)
        # the same net with the old alignment written out explicitly, as a 0.4 port would
        c1 = F.relu(net.conv1(x))
        c2 = F.relu(net.conv2(F.max_pool2d(c1, 2)))
        c3 = F.relu(net.conv3(F.max_pool2d(c2, 2)))
        u = F.interpolate(c3, scale_factor=2, mode="bilinear", align_corners=True) + c2
        u = F.interpolate(u, scale_factor=2, mode="bilinear", align_corners=True)
        out = net.score(torch.cat([u, c1], 1))
        ported = F.interpolate(out, size=(19, 21), mode="bilinear", align_corners=True)
    assert (then - ported).abs().max() < 1e-6
    assert (today - ported).abs().max() > 1e-2


# ---- the 2017 MNIST test loop: volatile, .data[0], size_average, .cuda(), implicit log_softmax ------------
def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(3)]


def test_the_2017_mnist_test_loop_fails_today_and_runs_under_compat():
    torch.manual_seed(0)
    model = mnist_2017.Net()
    batches = _batches()
    with pytest.raises(AssertionError, match="CUDA"):
        mnist_2017.test(model, batches)
    with pytest.raises(IndexError, match="0-dim"):
        mnist_2017.test(model, batches, use_cuda=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with compat():
            loss, correct, output, data = mnist_2017.test(model, batches)
            assert output.volatile and data.volatile and not output.requires_grad
    assert len(_compat_warnings(record, "CUDA")) == 1  # one warning for the whole block, not one per .cuda()
    with torch.no_grad():  # 0.3's numbers, computed the modern way
        outs = [F.log_softmax(model(d), dim=1) for d, _ in batches]
        want_loss = sum(F.nll_loss(o, t, reduction="sum").item() for o, (_, t) in zip(outs, batches)) / 12
        want_correct = sum((o.argmax(1) == t).sum().item() for o, (_, t) in zip(outs, batches))
    assert isinstance(loss, float) and abs(loss - want_loss) < 1e-5
    assert int(correct) == want_correct
    assert torch.allclose(output, outs[-1], atol=0, rtol=0)


def test_data_index_0_of_a_0_dim_tensor_is_its_value():
    loss = torch.tensor(0.25)
    with compat():
        assert loss.data[0] == 0.25 and isinstance(loss.data[0], float)
        assert loss[-1] == 0.25
        assert torch.tensor(7).data[0] == 7 and isinstance(torch.tensor(7).data[0], int)
        row = torch.arange(6.).view(2, 3)
        assert torch.equal(row[0], torch.tensor([0., 1., 2.]))  # other tensors index as today
        with pytest.raises(IndexError):
            loss[1]
    with pytest.raises(IndexError):
        loss.data[0]


def test_volatile_means_no_graph_for_what_is_computed_from_it():
    model = nn.Linear(3, 2)
    x = _seeded((4, 3))
    with pytest.warns(UserWarning, match="volatile was removed"):
        today = model(Variable(x, volatile=True))
    assert today.requires_grad and today.grad_fn is not None  # today a graph is recorded
    with compat():
        v = Variable(x, volatile=True)
        y = model(v)
        z = (y * 2).sum()
        assert v.volatile and y.volatile and z.volatile and not z.requires_grad and z.grad_fn is None
        trained = model(Variable(x)).sum()  # a training step beside it keeps its graph
        assert trained.requires_grad and not trained.volatile
        trained.backward()
    assert model.weight.grad is not None
    assert torch.equal(y, today)


# ---- CUDA code on a machine without CUDA -------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="compat leaves .cuda() alone where CUDA exists")
def test_cuda_model_code_runs_on_the_cpu_with_one_warning_at_the_users_line():
    x = _seeded((2, 3, 8, 8))
    with pytest.raises(AssertionError, match="CUDA"):
        cuda_model.Normalized()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with compat():
            model = cuda_model.Normalized().eval()
            with torch.no_grad():
                got = model(x)
                got_again = model(x)
            assert isinstance(x, torch.cuda.FloatTensor) and not isinstance(x, torch.cuda.LongTensor)
            assert torch.cuda.LongTensor([1, 2]).dtype == torch.int64
            assert x.type("torch.cuda.DoubleTensor").dtype == torch.float64
    cuda = _compat_warnings(record, "CUDA")
    assert len(cuda) == 1 and cuda[0].filename == cuda_model.__file__
    first = (_line_of(cuda_model, "self.features = nn.Sequential("), _line_of(cuda_model, ").cuda()"))
    assert first[0] <= cuda[0].lineno <= first[1]  # the Sequential's .cuda(), the first CUDA request
    with torch.no_grad():
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        want = F.softmax(model.classifier(model.features(x / std - 2).view(2, -1)), dim=1)
    assert torch.equal(got, want) and torch.equal(got_again, want)
    assert not isinstance(x, torch.cuda.FloatTensor)


# ---- Python 2 `/` ----------------------------------------------------------------------------------------
class GroupedPorted(nn.Module):
    """py2_division.Grouped as Python 2 computed it (// everywhere)."""

    def __init__(self, channels=16, groups=4):
        super().__init__()
        self.groups = groups
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.bn = nn.BatchNorm2d(channels // 2)
        self.conv = nn.Conv2d(channels // 2, channels, 3, padding=1, groups=groups)

    def forward(self, x):
        x = self.conv(F.relu(self.bn(self.reduce(x))))
        n, c, h, w = x.size()
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def _line_of(module, text):
    with open(module.__file__) as f:
        return next(i for i, line in enumerate(f, 1) if text in line)


def test_python2_division_sizes_fail_today_and_are_integers_under_compat():
    x = _seeded((1, 16, 4, 4))
    with pytest.raises(TypeError):
        py2_division.Grouped()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with compat():
            model = py2_division.Grouped().eval()
            with torch.no_grad():
                got = model(x)
                up = py2_division.UpTo()(x)
    ported = GroupedPorted().eval()
    ported.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(got, ported(x))
    assert torch.equal(up, F.interpolate(x, size=(8, 8)))
    assert model.reduce.out_channels == 8 and type(model.reduce.out_channels) is int
    sites = {(w.filename, w.lineno) for w in _compat_warnings(record, "a float where torch needs an integer")}
    here = py2_division.__file__
    assert {(here, _line_of(py2_division, "channels, channels / 2, 1")),
            (here, _line_of(py2_division, "nn.BatchNorm2d(channels / 2)")),
            (here, _line_of(py2_division, "c / self.groups")),
            (here, _line_of(py2_division, "x.size(2) * 4 / 2"))} <= sites


def test_a_float_size_that_is_not_whole_is_never_truncated():
    with pytest.raises(CompatError) as err:
        with compat():
            py2_division.Odd()
    message = str(err.value)
    assert f"{py2_division.__file__}:{_line_of(py2_division, 'channels / 2, 3')}:" in message
    assert "12.5" in message and "floored it (to 12)" in message and "`//`" in message
    x = _seeded((2, 6))
    with compat(), pytest.raises(CompatError, match="Tensor.view\\(\\) got 1.5"):
        x.view(2, 3 / 2, 4)


# ---- idioms that still work: compat leaves them as they are ------------------------------------------------
def test_implicit_dim_softmax_sigmoid_tanh_and_inplace_flags_are_the_same_with_and_without_compat():
    torch.manual_seed(0)
    gates = activations_2017.Gates().eval()
    x = _seeded((2, 3, 6, 6))
    with torch.no_grad():
        today = gates(x)
        with compat():
            then = gates(x)
        h = F.relu(gates.conv(x))
        h = F.leaky_relu(h * torch.sigmoid(h) + torch.tanh(h), 0.1)
        h = F.elu(F.relu(h - 0.5))
        want = F.log_softmax(gates.fc(F.adaptive_avg_pool2d(h, 1).flatten(1)), dim=1)
    assert torch.equal(today, then) and torch.allclose(then, want, atol=1e-6)
    a, b = activations_2017.SpatialSoftmax()(x)
    assert torch.equal(a, F.softmax(x, dim=1)) and torch.equal(b, F.softmax(x[0], dim=0))


def test_size_average_and_reduce_give_the_0_3_reductions_with_and_without_compat():
    out, target = _seeded((4, 5), 1), _seeded((4, 5), 2)
    scores, labels = _seeded((4, 3), 3), torch.tensor([0, 2, 1, 2])
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        today = activations_2017.losses(out, target, scores, labels)
    with compat():
        then = activations_2017.losses(out, target, scores, labels)
    want = (((out - target) ** 2).sum(), ((out - target) ** 2).mean(), (out - target).abs(),
            -scores[torch.arange(4), labels].sum(),               # nll_loss reads log-probabilities
            -scores.log_softmax(1)[torch.arange(4), labels].mean())  # cross entropy makes them
    for a, b, w in zip(today, then, want):
        assert torch.equal(a, b) and torch.allclose(b, w, atol=1e-6)


# ---- the recorder sees ops run through compat's replacements as the user's ---------------------------------
def test_ops_run_through_compat_are_attributed_to_the_users_line():
    net = segnet_bilinear.SegNet().eval()
    x = _seeded((1, 3, 16, 16))
    with torch.no_grad(), tracecap.capture(legacy="0.3") as cap:
        net(x)
    resizes = [n for n in cap.graph.nodes if n.op == "interpolate"]
    assert [n.params["align_corners"] for n in resizes] == [True, True, True]
    assert [n.meta["source"] for n in resizes] == [
        f"{segnet_bilinear.__file__}:{_line_of(segnet_bilinear, t)}"
        for t in ("self.up(c3) + c2", "F.upsample(u, scale_factor=2", "F.upsample(out, size")]


def test_ops_written_in_the_block_through_compat_are_the_blocks_own():
    x = _seeded((2, 6))
    line = sys._getframe().f_lineno + 2
    with tracecap.capture(legacy="0.3") as cap:
        y = x.view(3, 12 / 3)[0:2]
    graph = cap.graph
    assert [b.name for b in graph.inputs] == ["x"] and graph.outputs[0].shape == (2, 4)
    assert [n.op for n in graph.nodes] == ["view", "getitem"]
    assert [n.meta["source"] for n in graph.nodes] == [f"{__file__}:{line}"] * 2
    assert torch.equal(y, x.view(3, 4)[0:2])


def test_a_refused_op_run_through_compat_names_the_users_line():
    from tracecap.mappers import caffe

    def masked(x):
        return x[x > 0]  # through compat's Tensor.__getitem__
    x = _seeded((1, 3, 4, 4))
    with tracecap.capture(legacy="0.3") as cap:
        masked(x)
    with pytest.raises(tracecap.UnsupportedOpError) as err:
        caffe.save(cap.graph, "unused.prototxt", "unused.caffemodel")
    line = masked.__code__.co_firstlineno + 1
    assert any(f"{__file__}:{line}" in p and "getitem" in p for p in err.value.problems)
