"""`tracecap convert` end to end, through the installed console script."""
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tracecap import cli


def _tracecap(*args, cwd=None):
    exe = shutil.which("tracecap") or None
    cmd = [exe] if exe else [sys.executable, "-m", "tracecap"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


def test_convert_bundled_model_with_verify(tmp_path):
    r = _tracecap("convert", "lenet", "--dialect", "opencv", "--verify", "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "[1/4] loading model lenet" in r.stderr and "[4/4] verifying on opencv" in r.stderr
    summary = json.loads((tmp_path / "lenet.json").read_text())
    assert summary["inputs"] == {"x": [1, 3, 32, 32]}
    assert summary["verify"]["opencv"]["ok"] and summary["verify"]["opencv"]["max_abs_diff"] < 1e-4
    assert (tmp_path / "lenet.prototxt").read_text().count("layer {") == summary["ops"] + 1  # + the Input layer
    assert (tmp_path / "lenet.caffemodel").stat().st_size > 200_000  # 62k float32 weights


def test_convert_model_from_a_file(tmp_path):
    (tmp_path / "mynet.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
            def forward(self, x):
                return self.conv(x).relu()
    """))
    rc = cli.main(["convert", f"{tmp_path / 'mynet.py'}:Net", "--input", "1x3x8x8", "-o", str(tmp_path / "out"),
                   "--quiet"])
    assert rc == 0
    text = (tmp_path / "out" / "net.prototxt").read_text()
    assert 'type: "Convolution"' in text and 'type: "ReLU"' in text


def test_convert_unsupported_op_exits_2_naming_the_source(tmp_path, capsys):
    (tmp_path / "bad.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        class Net(nn.Module):
            def forward(self, x):
                return torch.erf(x)
    """))
    rc = cli.main(["convert", f"{tmp_path / 'bad.py'}:Net", "--input", "1x3x4x4", "-o", str(tmp_path / "out"),
                   "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no Caffe mapping for `erf`" in err and "bad.py:5" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "net.prototxt").exists()


@pytest.mark.parametrize("args,message", [
    (["convert", "nosuch"], "unknown model 'nosuch'"),
    (["convert", "lenet", "--input", "1xAx3"], "expected dimensions like 1x3x224x224"),
    (["convert", "missing_file.py:Net", "--input", "1x3"], "model file not found"),
])
def test_convert_bad_arguments(args, message, tmp_path, capsys):
    rc = cli.main(args + ["-o", str(tmp_path), "--quiet"])
    assert rc == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("dialect", ["bvlc", "opencv"])
def test_inspect_caffe_files_tells_the_dialect(dialect, tmp_path, capsys):
    assert cli.main(["convert", "lenet", "--dialect", dialect, "-o", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(tmp_path / "lenet.prototxt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dialect"] == dialect and report["layers"][0]["type"] == "Input"
    assert [l["type"] for l in report["layers"]].count("Pooling") == 2
    assert cli.main(["inspect", str(tmp_path / "lenet.caffemodel")]) == 0
    out = capsys.readouterr().out
    assert "62,006 parameters" in out and "6x3x5x5" in out


def test_inspect_garbage_prototxt_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad.prototxt").write_text("layer { nonsense: 1 }")
    assert cli.main(["inspect", str(tmp_path / "bad.prototxt")]) == 2
    assert "not a Caffe prototxt in any of bvlc, opencv" in capsys.readouterr().err


SHARED = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "legacy-checkpoints"
DP_CKPT = SHARED / "legacy_2018-08_chenchingchih_ckpt.t7"


def test_convert_with_weights_from_a_real_2018_checkpoint(tmp_path, capsys):
    if not DP_CKPT.is_file():
        pytest.skip(f"{DP_CKPT} not found (../shared beside the repo)")
    rc = cli.main(["convert", "cifar_resnet20", "--weights", str(DP_CKPT), "--dialect", "opencv", "--verify",
                   "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "weights: 128 tensors" in err
    summary = json.loads((tmp_path / "cifar_resnet20.json").read_text())
    assert summary["weights"] == str(DP_CKPT) and summary["verify"]["opencv"]["ok"]
    import torch
    from tracecap.mappers.caffe import writer
    net = writer.load(tmp_path / "cifar_resnet20.prototxt", tmp_path / "cifar_resnet20.caffemodel")
    conv1 = next(l for l in net.layer if l.name == "conv1")
    from tracecap.checkpoint import load_checkpoint
    trained = load_checkpoint(DP_CKPT)["net"]["module.conv1.weight"]
    assert torch.equal(torch.tensor(list(conv1.blobs[0].data)).view_as(trained), trained)


def test_convert_with_weights_that_do_not_fit_shows_the_diff(tmp_path, capsys):
    if not DP_CKPT.is_file():
        pytest.skip(f"{DP_CKPT} not found (../shared beside the repo)")
    rc = cli.main(["convert", "lenet", "--weights", str(DP_CKPT), "-o", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "its weights do not fit the model" in err and "missing" in err and "conv2.weight" in err
    assert not (tmp_path / "lenet.prototxt").exists()


def test_verify_compares_every_available_runtime(tmp_path, capsys, runtime):
    assert cli.main(["convert", "squeezenet1_1", "--dialect", "opencv", "-o", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    names = ["opencv", runtime] if runtime != "opencv" else ["opencv"]
    args = ["verify", str(tmp_path / "squeezenet1_1.prototxt"), str(tmp_path / "squeezenet1_1.caffemodel"), "--json"]
    for name in names:
        args += ["--runtime", name]
    assert cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtimes"] == names and report["inputs"] == {"x": [1, 3, 224, 224]}
    (row,) = report["outputs"].values()
    assert row["shape"] == [1, 1000]
    if runtime == "caffe":
        assert row["caffe"] < 1e-4 * max(1.0, row["max_abs"])
