"""A new user's first commands just work, or fail in one clear paragraph (exit 2, no traceback).

Each test runs the installed console script as a subprocess, as a user would.
"""
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tracecap.mappers import caffe
from tracecap.mappers.caffe import dialects, writer
from tracecap.errors import MappingError

from conversion import capture


def _tracecap(*args, cwd=None):
    exe = shutil.which("tracecap")
    cmd = [exe] if exe else [sys.executable, "-m", "tracecap"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=900)


def test_convert_with_verify_in_the_default_dialect_works(tmp_path):
    r = _tracecap("convert", "lenet", "--verify", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "translation" in r.stderr and "opencv: max abs diff" in r.stderr
    summary = json.loads((tmp_path / "lenet.json").read_text())
    assert summary["dialect"] == "bvlc" and summary["verify"]["opencv"]["ok"]
    assert "round_mode" in (tmp_path / "lenet.prototxt").read_text()   # the user's file stays bvlc
    r = _tracecap("verify", tmp_path / "lenet.prototxt", tmp_path / "lenet.caffemodel")
    assert r.returncode == 0, r.stderr
    assert "exact opencv-dialect translation" in r.stdout and r.stdout.rstrip().endswith("ok")


def test_bvlc_translation_gives_the_opencv_files_byte_for_byte(tmp_path):
    import torch
    import torch.nn as nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.MaxPool2d(3, 2), nn.AvgPool2d(2, ceil_mode=True),
                          nn.Hardtanh(0, 6)).eval()
    graph, _ = capture(model, torch.randn(1, 3, 17, 17))
    paths = {}
    for dialect in ("bvlc", "opencv"):
        paths[dialect] = (tmp_path / f"{dialect}.prototxt", tmp_path / f"{dialect}.caffemodel")
        caffe.save(graph, *paths[dialect], dialect=dialect)
    proto, model_file = dialects.translate_files(*paths["bvlc"], tmp_path, stem="t")
    assert open(proto, "rb").read() == paths["opencv"][0].read_bytes()
    assert open(model_file, "rb").read() == paths["opencv"][1].read_bytes()


def test_bvlc_layers_without_an_opencv_equivalent_are_refused():
    from tracecap.mappers.caffe.proto import module_for
    net = module_for("bvlc").NetParameter()
    clip = net.layer.add(name="c", type="Clip", bottom=["x"], top=["y"])
    clip.clip_param.min, clip.clip_param.max = -1.0, 1.0
    with pytest.raises(MappingError, match=r"layer 'c': Clip\(-1, 1\) has no opencv-dialect layer"):
        dialects.bvlc_to_opencv(net)


def test_a_forward_that_fails_on_the_given_input_is_one_clear_line(tmp_path):
    r = _tracecap("convert", "resnet18", "--input", "1x3", "-o", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]    # after the [1/3], [2/3] progress lines
    assert line.startswith("tracecap: error: the model's forward failed on input 1x3: RuntimeError: Expected 3D")
    assert line.endswith("(at resnet.py:95 in conv1)")
    r = _tracecap("--debug", "convert", "resnet18", "--input", "1x3", "-o", tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr
    r = _tracecap("convert", "resnet18", "--input", "1x3", "-o", tmp_path, "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_forward_failure_names_the_innermost_module_and_the_users_line(tmp_path):
    (tmp_path / "deep.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 4)
            def forward(self, x):
                return self.fc(x.view(x.size(0), -1))
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Identity(), Block())
            def forward(self, x):
                return self.body(x)
    """))
    r = _tracecap("convert", f"{tmp_path / 'deep.py'}:Net", "--input", "2x3x4", "-o", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "failed on input 2x3x4: RuntimeError: mat1 and mat2 shapes cannot be multiplied" in r.stderr
    assert "(at deep.py:8 in body.1.fc)" in r.stderr


def test_unexpected_errors_are_one_paragraph_too(tmp_path):
    (tmp_path / "broken.py").write_text("def make():\n    return {}['missing']\n")
    r = _tracecap("convert", f"{tmp_path / 'broken.py'}:make", "--input", "1x3", "-o", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "tracecap: error: unexpected KeyError: 'missing'" in r.stderr and "--debug" in r.stderr


def _legacy_deploy(tmp_path, header):
    """lenet converted, its Input layer replaced by the old top-level declaration ``header``."""
    r = _tracecap("convert", "lenet", "--dialect", "opencv", "-o", tmp_path, "--quiet")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "lenet.prototxt").read_text()
    first, second = text.index("layer {"), text.index("layer {", text.index("layer {") + 1)
    assert 'type: "Input"' in text[first:second]
    path = tmp_path / "deploy.prototxt"
    path.write_text(text[:first] + header + text[second:])
    return path, tmp_path / "lenet.caffemodel"


@pytest.mark.parametrize("header", [
    'input: "x"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 32\ninput_dim: 32\n',
    'input: "x"\ninput_shape {\n  dim: 1\n  dim: 3\n  dim: 32\n  dim: 32\n}\n',
], ids=["input_dim", "input_shape"])
def test_verify_reads_old_deploy_prototxts(tmp_path, header):
    proto, model = _legacy_deploy(tmp_path, header)
    r = _tracecap("verify", proto, model, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["inputs"] == {"x": [1, 3, 32, 32]} and report["ok"]


def test_verify_refuses_an_enormous_declared_input(tmp_path):
    proto, model = _legacy_deploy(tmp_path, 'input: "x"\ninput_dim: 100000\ninput_dim: 3\ninput_dim: 100000\n'
                                            'input_dim: 100000\n')
    r = _tracecap("verify", proto, model)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert "input 'x' declares shape 100000x3x100000x100000 (3,000,000,000,000,000 elements)" in r.stderr
    assert "--inputs FILE.npz" in r.stderr


def test_a_factory_returning_only_torch_modules_converts(tmp_path):
    """No line of the model is the user's: the ops are called from torch's Sequential, run by
    tracecap convert's own block - they must still be recorded (with their module paths)."""
    (tmp_path / "plain.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def make():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))
    """))
    r = _tracecap("convert", f"{tmp_path / 'plain.py'}:make", "--input", "2x3x8x8", "--verify", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "o" / "make.json").read_text())
    assert summary["ops"] == 5 and all(v["ok"] for v in summary["verify"].values())
