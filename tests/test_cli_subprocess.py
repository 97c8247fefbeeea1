"""The installed `tracecap` command, run as a user runs it: convert + verify + per-layer report of three
bundled models, and the errors a user meets first - each exit status 2, one message, no traceback."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest


from conftest import require_runtime
from conversion import rewrite_blobs


def _tracecap(*args, cwd=None):
    exe = shutil.which("tracecap")
    cmd = [exe] if exe else [sys.executable, "-m", "tracecap"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=900)


def _runtimes():
    names = [require_runtime("opencv")]
    from tracecap.runtimes import caffe_runtime
    if caffe_runtime.is_available() or os.environ.get("TRACECAP_REQUIRE_CAFFE") == "1":
        names.append(require_runtime("caffe"))
    return names


@pytest.mark.parametrize("model", ["lenet", "cifar_resnet20", "fcn_upsample"])
def test_convert_verify_and_per_layer_report(model, tmp_path):
    names = _runtimes()
    r = _tracecap("convert", model, "--dialect", "opencv", "--per-layer", "--json", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[5/5] comparing every layer with PyTorch" in r.stderr and "Traceback" not in r.stderr
    summary = json.loads(r.stdout)
    assert sorted(summary["verify"]) == sorted(names) and all(v["ok"] for v in summary["verify"].values())
    report = summary["per_layer"]
    assert report == json.loads((tmp_path / f"{model}.json").read_text())["per_layer"]
    assert sorted(report["runtimes"]) == sorted(names)
    assert all(v["ok"] and v["first_divergence"] is None for v in report["runtimes"].values())
    compared = [row for row in report["layers"] if row["compared"]]
    assert len(compared) >= len(report["layers"]) // 2
    assert all(row["where"].endswith(".py:" + row["where"].rsplit(":", 1)[1]) for row in compared)

    proto, caffemodel = tmp_path / f"{model}.prototxt", tmp_path / f"{model}.caffemodel"
    r = _tracecap("verify", proto, caffemodel, "--against", model)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].split()[:6] == ["layer", "type", "op", "module", "file:line", "shape"]
    assert all(f"{rt}: outputs max abs diff" in r.stdout for rt in names)
    assert "every layer within tolerance" in r.stdout and lines[-1] == "ok"


def test_a_corrupted_layer_exits_1_and_shows_its_source_line(tmp_path):
    names = _runtimes()
    assert _tracecap("convert", "cifar_resnet20", "--dialect", "opencv", "-o", tmp_path, "--quiet").returncode == 0
    caffemodel = tmp_path / "cifar_resnet20.caffemodel"
    rewrite_blobs(caffemodel, "layer3.1.conv1", lambda blobs: blobs[0].__imul__(1.3))
    r = _tracecap("verify", tmp_path / "cifar_resnet20.prototxt", caffemodel, "--against", "cifar_resnet20", "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert {rt: v["first_divergence"] for rt, v in report["runtimes"].items()} == {rt: "layer3.1.conv1" for rt in names}
    r = _tracecap("verify", tmp_path / "cifar_resnet20.prototxt", caffemodel, "--against", "cifar_resnet20")
    assert r.returncode == 1
    assert "first divergence at layer layer3.1.conv1 (Convolution), op `conv2d` in module `layer3.1.conv1` at " \
           "cifar_resnet.py:30" in r.stdout
    assert "30 | out = F.relu(self.bn1(self.conv1(x)))" in r.stdout and r.stdout.rstrip().endswith("DIVERGES")


def test_per_layer_in_the_default_dialect(tmp_path):
    require_runtime("opencv")
    r = _tracecap("convert", "lenet", "--per-layer", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "translation" in r.stderr and "every layer within tolerance" in r.stdout


def _erf_model(tmp_path):
    (tmp_path / "bad.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        class Net(nn.Module):
            def forward(self, x):
                return torch.erf(x)
    """))
    return f"{tmp_path / 'bad.py'}:Net"


@pytest.mark.parametrize("case", ["bad_spec", "missing_weights", "wrong_input_shape", "unsupported_op",
                                  "against_bad_spec", "against_other_model"])
def test_first_errors_exit_2_with_one_message(case, tmp_path):
    if case == "bad_spec":
        args, message = ["convert", "resnet_18"], "unknown model 'resnet_18': use a bundled name"
    elif case == "missing_weights":
        missing = tmp_path / "nope.pth"
        args, message = ["convert", "lenet", "--weights", missing], f"{missing}: no such file"
    elif case == "wrong_input_shape":
        args, message = ["convert", "lenet", "--input", "1x3x8x8", "--per-layer"], \
            "the model's forward failed on input 1x3x8x8: RuntimeError: "
    elif case == "unsupported_op":
        args, message = ["convert", _erf_model(tmp_path), "--input", "1x3x4x4", "--per-layer"], \
            "no Caffe mapping for `erf`"
    else:
        assert _tracecap("convert", "lenet", "--dialect", "opencv", "-o", tmp_path, "--quiet").returncode == 0
        spec = "nosuch" if case == "against_bad_spec" else "cifar_resnet20"
        args = ["verify", tmp_path / "lenet.prototxt", tmp_path / "lenet.caffemodel", "--against", spec]
        message = "unknown model 'nosuch'" if spec == "nosuch" else "is not the conversion of this model as captured"
    r = _tracecap(*args, "-o", tmp_path / "out") if args[0] == "convert" else _tracecap(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    error = r.stderr[r.stderr.index("tracecap: error: "):]           # the message, after the step lines
    assert message in error and "Traceback" not in r.stderr, r.stderr
    if case == "wrong_input_shape":
        assert error.rstrip().endswith("(at lenet.py:38 in conv2)") and "\n" not in error.strip()
    if case == "unsupported_op":
        assert "bad.py:5" in r.stderr
    r = _tracecap("--debug", *args) if args[0] != "convert" else _tracecap("--debug", *args, "-o", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_the_html_page_of_a_corrupted_layer_names_it(tmp_path):
    """verify --against --html: the page's banner, table row and graph box mark the corrupted layer."""
    names = _runtimes()
    assert _tracecap("convert", "cifar_resnet20", "--dialect", "opencv", "-o", tmp_path, "--quiet").returncode == 0
    caffemodel = tmp_path / "cifar_resnet20.caffemodel"
    rewrite_blobs(caffemodel, "layer2.0.conv2", lambda blobs: blobs[0].__imul__(-1))
    page = tmp_path / "report.html"
    r = _tracecap("verify", tmp_path / "cifar_resnet20.prototxt", caffemodel, "--against", "cifar_resnet20",
                  "--html", page)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    html = page.read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert html.count("first divergence") >= len(names) and "layer2.0.conv2" in html
    assert "cifar_resnet.py:" in html
    import xml.etree.ElementTree as ET
    svg = html[html.index("<svg"):html.index("</svg>") + len("</svg>")]
    boxes = [e for e in ET.fromstring(svg).iter() if "st-first" in e.get("class", "").split()]
    assert len(boxes) == 1 and "layer2.0.conv2" in "".join(boxes[0].itertext())


README = __import__("pathlib").Path(__file__).resolve().parents[1] / "README.md"


def _section(title):
    text = README.read_text()
    start = text.index(f"## {title}")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_where_does_it_diverge_commands_run(tmp_path):
    require_runtime("opencv")
    block = _section("Where does it diverge?").split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split() for line in block.strip().splitlines()]
    assert [c[:2] for c in commands] == [["tracecap", "convert"], ["tracecap", "verify"]]
    for command in commands:
        r = _tracecap(*command[1:], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "every layer within tolerance" in r.stdout and "Traceback" not in r.stderr
