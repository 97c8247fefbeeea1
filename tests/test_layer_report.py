"""The per-layer divergence report names the layer that really diverges, on each real runtime, with the
user's file:line - and never blames a layer that is right (decompositions, in-place tops, layouts)."""
import inspect
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import tracecap
from tracecap import layer_report, progress
from tracecap.convert import ConvertError, convert, verify_against
from tracecap.legacy_models import cifar_resnet
from tracecap.legacy_models.lenet import LeNet
from tracecap.mappers import caffe

from conftest import require_runtime
from conversion import capture, rewrite_blobs

ROW_KEYS = {"layer", "type", "top", "op", "module", "where", "shape", "compared", "diffs"}


def _line_of(function, text):
    """file.py:NN of the line of ``function`` that contains ``text``: where the report must point."""
    lines, first = inspect.getsourcelines(function)
    (k,) = [i for i, line in enumerate(lines) if text in line]
    return f"{inspect.getsourcefile(function).rsplit('/', 1)[-1]}:{first + k}"


def _convert(name, tmp_path):
    convert(name, [], str(tmp_path), dialect="opencv", quiet=True)
    return tmp_path / f"{name}.prototxt", tmp_path / f"{name}.caffemodel"


def _first_bad_is(report, runtime, layer, where):
    verdict = report["runtimes"][runtime]
    assert not verdict["ok"] and verdict["first_divergence"] == layer, verdict
    rows = report["layers"]
    k = [r["layer"] for r in rows].index(layer)
    assert rows[k]["where"] == where and rows[k]["compared"]
    assert not rows[k]["diffs"][runtime]["ok"]
    assert all(r["diffs"][runtime]["ok"] for r in rows[:k] if r["compared"])   # everything before agrees


def test_scaled_conv_weights_are_named_first_with_their_line(tmp_path, runtime):
    proto, model = _convert("cifar_resnet20", tmp_path)
    rewrite_blobs(model, "layer2.0.conv2", lambda blobs: blobs[0].__imul__(1.5))
    report = verify_against(proto, model, "cifar_resnet20", runtime_names=[runtime], quiet=True)
    _first_bad_is(report, runtime, "layer2.0.conv2", _line_of(cifar_resnet.BasicBlock.forward, "self.conv2("))
    text = layer_report.format_report(report)
    assert "<< first beyond tolerance on " + runtime in text
    assert "out = self.bn2(self.conv2(out))" in text          # the user's source line, read from the file
    assert text.rstrip().endswith("DIVERGES")


def test_two_swapped_bias_channels_are_named_first(tmp_path, runtime):
    proto, model = _convert("lenet", tmp_path)

    def swap(blobs):
        blobs[1][[0, 1]] = blobs[1][[1, 0]]
    rewrite_blobs(model, "conv2", swap)
    report = verify_against(proto, model, "lenet", runtime_names=[runtime], quiet=True)
    _first_bad_is(report, runtime, "conv2", _line_of(LeNet.forward, "self.conv2("))


class _SqrtThenAffine(nn.Module):
    def forward(self, x):
        return torch.sqrt(x.abs() + 1) * 2 + 1


def test_opencvs_power_fusion_is_named_on_opencv_only(tmp_path, monkeypatch):
    """OpenCV fuses Power(0.5) with the scalar Power reading it, wrongly (runtime_quirks splits them).
    Without that split, the report must name the second Power on OpenCV - and nothing on Caffe."""
    names = ["opencv", require_runtime("caffe")]
    require_runtime("opencv")
    x = torch.randn(1, 3, 4, 4)
    graph, eager = capture(_SqrtThenAffine(), x)
    monkeypatch.setattr(caffe, "keep_fusions_apart", lambda layers: layers)
    layers = caffe.to_layers(graph, "opencv")
    proto, model = tmp_path / "p.prototxt", tmp_path / "p.caffemodel"
    caffe.save(graph, proto, model, dialect="opencv")
    assert "Split" not in proto.read_text()
    report = layer_report.build(graph, proto, model, [x], layers=layers, runtime_names=names, eager=[eager])
    sqrt, mul = [r for r in report["layers"] if r["type"] == "Power"][1:3]
    assert (sqrt["op"], mul["op"]) == ("sqrt", "mul")
    assert report["runtimes"]["opencv"]["first_divergence"] == "mul" and not report["runtimes"]["opencv"]["ok"]
    assert report["runtimes"]["opencv"]["max_abs_diff"] > 0.1
    assert report["runtimes"]["caffe"] == {"ok": True, "first_divergence": None,
                                           "max_abs_diff": report["runtimes"]["caffe"]["max_abs_diff"]}
    assert mul["where"] == _line_of(_SqrtThenAffine.forward, "torch.sqrt")
    monkeypatch.undo()                       # as shipped, the split keeps OpenCV right
    caffe.save(graph, proto, model, dialect="opencv")
    report = layer_report.build(graph, proto, model, [x], runtime_names=["opencv"], eager=[eager])
    assert report["runtimes"]["opencv"]["ok"]


class _Shuffle(nn.Module):
    """ShuffleNet's pieces: chunk (a Slice with two tops), BN + ReLU (fused by OpenCV), channel shuffle."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, torch.relu(self.bn(self.conv(b)))], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def test_a_right_conversion_blames_no_layer_and_lists_what_it_cannot_compare(tmp_path, runtime):
    model = _Shuffle().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 8, 6, 6)
    summary = tracecap.export(model, x, tmp_path / "shuffle", per_layer=True, verify=True)
    report = summary["per_layer"]
    assert set(report) == {"prototxt", "caffemodel", "model", "tolerance", "inputs", "outputs", "runtimes", "layers"}
    assert runtime in report["runtimes"] and report["runtimes"][runtime]["ok"]
    assert all(set(r) == ROW_KEYS for r in report["layers"])
    by_type = {}
    for r in report["layers"]:
        by_type.setdefault(r["type"], []).append(r)
    assert by_type["BatchNorm"][0]["compared"] is False and by_type["BatchNorm"][0]["diffs"] == {}  # inside BN
    (chunk,) = by_type["Slice"]
    assert chunk["compared"] and chunk["op"] == "chunk" and chunk["shape"] == [1, 4, 6, 6]
    scale = by_type["Scale"][0]
    assert scale["op"] == "batch_norm" and scale["module"] == "bn" and scale["compared"]
    assert scale["where"] == _line_of(_Shuffle.forward, "self.bn(")
    assert all(d["ok"] and d["cosine"] > 0.9999 for r in report["layers"] for d in r["diffs"].values())
    json.loads(json.dumps(report))                       # JSON-ready as it is


def test_a_second_top_of_a_layer_is_read_faithfully_on_opencv(tmp_path):
    """Read with many other blobs, OpenCV 4.14 returned a Slice's second output overwritten; the
    runtime now reads it through a Split. Checked against torch's own values."""
    require_runtime("opencv")
    from tracecap import legacy_models, runtimes
    model = legacy_models.build("shufflenet_v2", seed=0).eval()
    x = torch.randn(1, 3, 224, 224)
    graph, eager = capture(model, x)
    proto, caffemodel = tmp_path / "s.prototxt", tmp_path / "s.caffemodel"
    caffe.save(graph, proto, caffemodel, dialect="opencv")
    values = layer_report.torch_values(graph, [x], [eager])
    tops = [t for layer in runtimes.summarize(proto).layers[1:] for t in layer["top"] if t in values]
    second = [t for t in tops if t.endswith(".chunk.1")]
    assert len(second) >= 10
    got = runtimes.run(proto, caffemodel, {"x": x.numpy()}, blobs=tops)
    for t in second:
        assert np.abs(got[t].reshape(values[t].shape) - values[t]).max() < 1e-4, t


def test_in_place_tops_are_compared_only_after_their_last_writer(tmp_path):
    """A hand-edited prototxt with ReLU in place: the convolution's top is overwritten, so it is listed
    as not compared rather than blamed for the ReLU's values."""
    require_runtime("opencv")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    x = torch.randn(1, 3, 8, 8)
    graph, eager = capture(model, x)
    proto, caffemodel = tmp_path / "n.prototxt", tmp_path / "n.caffemodel"
    caffe.save(graph, proto, caffemodel, dialect="opencv")
    conv, relu, pool = [layer.name for layer in caffe.to_layers(graph, "opencv")]
    text = proto.read_text().replace(f'top: "{relu}"', f'top: "{conv}"').replace(f'bottom: "{relu}"',
                                                                                   f'bottom: "{conv}"')
    proto.write_text(text)
    report = layer_report.build(graph, proto, caffemodel, [x], runtime_names=["opencv"], eager=[eager])
    rows = {r["layer"]: r for r in report["layers"]}
    assert not rows[conv]["compared"] and not rows[relu]["compared"] and rows[pool]["compared"]
    assert report["runtimes"]["opencv"]["ok"]


class _SliceWrite(nn.Module):
    """An in-place op whose call returns nothing (``x[:, 0] = ...``, inception_v3's transform_input)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = x.clone()
        x[:, 0] = x[:, 0] * 2 + 1
        return self.conv(x)


@pytest.mark.parametrize("runtime", ["opencv", "caffe"])
def test_a_slice_write_is_replayed_and_compared(tmp_path, runtime):
    """The replay takes the written tensor of a slice write as its top (it once crashed here, reading the
    arguments of a call it had not made)."""
    require_runtime(runtime)
    torch.manual_seed(0)
    summary = tracecap.export(_SliceWrite().eval(), torch.randn(1, 3, 8, 8), tmp_path / "m", per_layer=True)
    report = summary["per_layer"]
    assert report["runtimes"][runtime]["ok"] and report["runtimes"][runtime]["first_divergence"] is None
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["conv"]["compared"] and rows["conv"]["diffs"][runtime]["ok"]
    assert any(r["compared"] and r["op"] == "setitem" for r in report["layers"]), \
        [(r["layer"], r["op"], r["compared"]) for r in report["layers"]]


def test_another_layout_is_not_compared():
    assert layer_report._diff(np.zeros((1, 6, 1, 1)), np.zeros((1, 6)), 1e-4)["ok"]  # the same values in order
    assert layer_report._diff(np.zeros((3, 2)), np.zeros((2, 3)), 1e-4) is None      # transposed: not comparable


def test_files_of_another_model_are_refused(tmp_path):
    require_runtime("opencv")
    proto, caffemodel = _convert("lenet", tmp_path)
    with pytest.raises(tracecap.TracecapError, match="not the conversion of this model as captured"):
        verify_against(proto, caffemodel, "cifar_resnet20", quiet=True)


def test_export_is_one_call_and_fails_clearly(tmp_path):
    require_runtime("opencv")
    model = LeNet().eval()
    summary = tracecap.export(model, torch.randn(1, 3, 32, 32), tmp_path / "out" / "net")
    assert summary["prototxt"] == str(tmp_path / "out" / "net.prototxt") and summary["ops"] > 5
    assert summary["inputs"] == {"x": [1, 3, 32, 32]} and summary["verify"]["opencv"]["ok"]
    assert "per_layer" not in summary
    with pytest.raises(ConvertError, match=r"forward failed on input 1x3x8x8: RuntimeError: .*\(at lenet.py:38 in "
                                           r"conv2\)"):
        tracecap.export(model, torch.randn(1, 3, 8, 8), tmp_path / "bad")
    with pytest.raises(ConvertError, match="args must be a tensor or a tuple of tensors"):
        tracecap.export(model, [3], tmp_path / "bad")


def test_steps_and_progress_lines(capsys):
    steps = progress.Steps(2)
    steps("one")
    steps.note("detail")
    steps("two")
    tick = progress.reporter("work")
    for k in range(1, 9):
        tick(k, 8)
    progress.reporter("silent", quiet=True)(1, 1)
    err = capsys.readouterr().err.splitlines()
    assert err == ["[1/2] one", "      detail", "[2/2] two", "      work: 2/8", "      work: 4/8", "      work: 6/8",
                   "      work: 8/8"]


def test_capture_progress_hooks_only_big_models_and_leaves_none(capsys):
    small = LeNet()
    with progress.modules_entered(small):
        small(torch.randn(1, 3, 32, 32))
    assert capsys.readouterr().err == ""
    big = nn.Sequential(*[nn.Sequential(nn.Identity(), nn.ReLU()) for _ in range(40)])
    with progress.modules_entered(big, quiet=True):
        pass
    assert not any(m._forward_pre_hooks for m in big.modules())
    with progress.modules_entered(big), tracecap.capture() as cap:
        big(torch.randn(2, 3))
    assert "capturing: modules entered: 120/120" in capsys.readouterr().err
    assert not any(m._forward_pre_hooks for m in big.modules())
    assert [n.op for n in cap.graph.nodes] == ["relu"] * 40


def test_the_readme_export_example_runs(tmp_path, monkeypatch, capsys):
    """The README's second Python block (export) runs after its first (which makes model and x)."""
    require_runtime("opencv")
    import re
    from pathlib import Path
    blocks = re.findall(r"```python\n(.*?)```", (Path(__file__).resolve().parents[1] / "README.md").read_text(), re.S)
    assert "tracecap.export(" in blocks[1]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(blocks[0] + blocks[1], "README.md", "exec"), scope)
    summary = scope["summary"]
    assert summary["prototxt"] == "out/resnet18.prototxt" and (tmp_path / "out" / "resnet18.caffemodel").is_file()
    assert summary["verify"]["opencv"]["ok"] and summary["inputs"] == {"x": [1, 3, 224, 224]}
