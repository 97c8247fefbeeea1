"""The 2017 code of tests/legacy_code, captured under tracecap.legacy.compat and converted: each real runtime
reproduces the old semantics (computed here without compat, the modern way) within 1e-5 x max(1, max|ref|).
What each idiom does without compat is in test_legacy_compat.py."""
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import Variable

from tracecap import cli
from tracecap.legacy import CompatWarning, compat

from conversion import check
from conftest import require_runtime
from legacy_code import activations_2017, cuda_model, mnist_2017, py2_division, segnet_bilinear
from test_legacy_compat import GroupedPorted, thnn_bilinear
from test_legacy_source_rewrite import load_model_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
LEGACY_CODE = Path(__file__).parent / "legacy_code"


def _seeded(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _within(got, want, tol=1e-5):
    diff = (got - want).abs().max().item()
    assert diff <= tol * max(1.0, want.abs().max().item()), diff
    return diff


def _converted(model, inputs, runtime, tmp_path):
    """check() under compat: (eager output under compat, worst runtime diff against it)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    with compat("0.3"):
        with torch.no_grad():
            eager = model(*inputs)
        graph, worst = check(model, inputs, runtime, tmp_path)
    return graph, eager, worst


def test_segnet_bilinear_converts_to_its_0_3_output(runtime, tmp_path):
    torch.manual_seed(0)
    net = segnet_bilinear.SegNet().eval()
    x = _seeded((1, 3, 16, 16))
    with torch.no_grad():  # the 0.3 output: the same net with align_corners=True written out
        c1 = F.relu(net.conv1(x))
        c2 = F.relu(net.conv2(F.max_pool2d(c1, 2)))
        c3 = F.relu(net.conv3(F.max_pool2d(c2, 2)))
        u = F.interpolate(F.interpolate(c3, scale_factor=2, mode="bilinear", align_corners=True) + c2,
                          scale_factor=2, mode="bilinear", align_corners=True)
        old = F.interpolate(net.score(torch.cat([u, c1], 1)), size=(19, 21), mode="bilinear", align_corners=True)
    graph, eager, worst = _converted(net, (x,), runtime, tmp_path)
    _within(eager, old)
    assert sum(n.op == "interpolate" for n in graph.nodes) == 3


def test_always_aligned_upsampling_converts_to_the_thnn_formula(runtime, tmp_path):
    x = _seeded((1, 3, 5, 3))
    graph, eager, worst = _converted(segnet_bilinear.AlwaysAligned(), (x,), runtime, tmp_path)
    _within(eager.double(), thnn_bilinear(thnn_bilinear(x, 10, 6).float(), 20, 12))


def test_mnist_net_with_implicit_log_softmax_on_a_volatile_input(runtime, tmp_path):
    torch.manual_seed(0)
    model = mnist_2017.Net().eval()
    x = _seeded((2, 1, 28, 28))
    with compat():
        v = Variable(x, volatile=True)
        graph, worst = check(model, (v,), runtime, tmp_path)
        assert v.volatile
    with torch.no_grad():  # dim=1 written out: the legacy rule for a 2-D input
        h = F.relu(F.max_pool2d(model.conv2(F.relu(F.max_pool2d(model.conv1(x), 2))), 2))
        want = F.log_softmax(model.fc2(F.relu(model.fc1(h.view(-1, 320)))), dim=1)
    assert graph.nodes[-1].op == "log_softmax" and graph.nodes[-1].params["dim"] == 1
    assert worst <= 1e-5 * max(1.0, want.abs().max().item())
    with compat(), torch.no_grad():
        _within(model(x), want, 1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="compat leaves .cuda() alone where CUDA exists")
def test_cuda_model_code_converts_on_the_cpu(runtime, tmp_path):
    with compat():
        model = cuda_model.Normalized().eval()
    x = _seeded((2, 3, 8, 8))
    graph, eager, worst = _converted(model, (x,), runtime, tmp_path)
    with torch.no_grad():
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        want = F.softmax(model.classifier(model.features(x / std - 2).view(2, -1)), dim=1)
    _within(eager, want, 1e-6)
    assert [b.name for b in graph.inputs] == ["x"]


def test_python2_division_models_convert_to_what_python2_computed(runtime, tmp_path):
    x = _seeded((1, 16, 4, 4))
    with compat():
        grouped = py2_division.Grouped().eval()
        halves = py2_division.Halves().eval()
    ported = GroupedPorted().eval()
    ported.load_state_dict(grouped.state_dict())
    _, eager, _ = _converted(grouped, (x,), runtime, tmp_path / "grouped")
    with torch.no_grad():
        _within(eager, ported(x), 1e-6)
    _, eager, _ = _converted(py2_division.UpTo(), (x,), runtime, tmp_path / "up")
    _within(eager, F.interpolate(x, scale_factor=2), 0)
    y = _seeded((2, 3, 4, 4))
    _, eager, _ = _converted(halves, (y,), runtime, tmp_path / "halves")
    with torch.no_grad():
        _within(eager, halves.fc(y.view(2, 24, 2).mean(2)), 0)


def test_gates_with_sigmoid_tanh_and_inplace_flags_convert_the_same_with_and_without_compat(runtime, tmp_path):
    torch.manual_seed(0)
    gates = activations_2017.Gates().eval()
    x = _seeded((2, 3, 6, 6))
    graph_then, eager, _ = _converted(gates, (x,), runtime, tmp_path / "then")
    (tmp_path / "today").mkdir()
    graph_today, worst = check(gates, (x,), runtime, tmp_path / "today")
    assert [n.op for n in graph_then.nodes] == [n.op for n in graph_today.nodes]
    then, today = (tmp_path / d / "net.bvlc.prototxt" for d in ("then", "today"))
    assert then.read_text() == today.read_text()
    _, eager, _ = _converted(activations_2017.SpatialSoftmax(), (x,), runtime, tmp_path / "softmax")
    assert torch.equal(eager[0], F.softmax(x, dim=1)) and torch.equal(eager[1], F.softmax(x[0], dim=0))


def test_a_python2_model_file_loads_rewritten_and_converts(runtime, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with compat():
            net = load_model_file(LEGACY_CODE / "py2_syntax.py", "tracecap_test_py2_syntax").Net().eval()
            x = _seeded((2, 3, 8, 8))
            graph, worst = check(net, (x,), runtime, tmp_path)
    rewrites = sorted(w.lineno for w in record if issubclass(w.category, CompatWarning) and "rewrote" in str(w.message))
    assert rewrites == [15, 18, 20, 21]
    assert "features: torch.Size([2, 8, 4, 4]) (async=True in a string stays)" in capsys.readouterr().out
    with torch.no_grad():
        want = net.fc(F.max_pool2d(F.relu(net.conv(x)), 2).view(2, -1))
    assert [n.op for n in graph.nodes] == ["conv2d", "relu", "max_pool2d", "view", "linear"]
    assert worst <= 1e-5 * max(1.0, want.abs().max().item())


def test_tracecap_convert_legacy_runs_a_python2_file_end_to_end(tmp_path, capsys):
    runtimes = [require_runtime(name) for name in ("opencv", "caffe")]
    spec = f"{LEGACY_CODE / 'py2_syntax.py'}:Net"
    assert cli.main(["convert", spec, "--input", "2x3x8x8", "-o", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "py2_syntax.py:18: invalid syntax" in err and "`async=` keyword argument" in err and "--legacy 0.3" in err
    rc = cli.main(["convert", spec, "--input", "2x3x8x8", "-o", str(tmp_path), "--quiet", "--legacy", "0.3",
                   "--dialect", "opencv", "--verify"])
    summary = json.loads((tmp_path / "net.json").read_text())
    assert rc == 0 and sorted(summary["verify"]) == sorted(runtimes)
    assert all(v["ok"] and v["max_abs_diff"] < 1e-5 for v in summary["verify"].values())


def test_legacy_changes_nothing_for_code_that_runs_today(tmp_path):
    """Bundled zoo models (2017 style, but runnable today): the same bytes with and without --legacy."""
    for name in ("lenet", "fcn_upsample"):
        for flags, out in (([], "today"), (["--legacy", "0.3"], "then")):
            assert cli.main(["convert", name, "-o", str(tmp_path / out), "--quiet"] + flags) == 0
        for suffix in (".prototxt", ".caffemodel"):
            today, then = (tmp_path / d / (name + suffix) for d in ("today", "then"))
            assert today.read_bytes() == then.read_bytes()


def test_convert_takes_legacy_as_a_keyword_and_refuses_unknown_versions(tmp_path, capsys):
    import inspect
    from tracecap.convert import convert
    assert inspect.signature(convert).parameters["legacy"].default is None
    assert cli.main(["convert", "lenet", "-o", str(tmp_path), "--quiet", "--legacy", "0.4"]) == 2
    assert "legacy version '0.4'" in capsys.readouterr().err
    assert not (tmp_path / "lenet.prototxt").exists()
