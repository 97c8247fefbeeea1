"""``tracecap inspect FILE [--json]``, the command table, and error reporting."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint_fixtures as fx
from tracecap import cli

SHARED = Path(__file__).resolve().parents[2] / "shared" / "legacy-checkpoints"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ckpt(tmp_path):
    sd = {"conv.weight": torch.zeros(4, 3, 3, 3), "conv.bias": torch.zeros(4), "steps": torch.tensor(5)}
    path = tmp_path / "ckpt.pth.tar"
    path.write_bytes(fx.legacy_bytes({"epoch": 12, "state_dict": sd, "best_acc": 0.75}, location="cuda:0"))
    return path


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_table(ckpt, capsys):
    code, out, err = run(["inspect", str(ckpt)], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[1] == "format        : legacy pickle (torch 0.1.10 - 1.5), version 1001"
    assert "writer        : torch 0.4 - 1.5" in lines
    assert "saved on      : cuda:0 (3 storages); loaded on cpu" in lines
    assert "weights       : ['state_dict'] (state dict)" in lines
    assert "  epoch       : 12" in lines and "  best_acc    : 0.75" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("name"))
    assert lines[header].split() == ["name", "dtype", "shape", "bytes"]
    assert lines[header + 2].split() == ["state_dict.conv.weight", "float32", "4x3x3x3", "432"]
    assert lines[header + 4].split() == ["state_dict.steps", "int64", "scalar", "8"]
    assert lines[-1] == "3 tensors, 456 B (456 B of distinct storage); total parameters: 113"


def test_json(ckpt, capsys):
    code, out, _ = run(["inspect", str(ckpt), "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["format"] == "legacy" and report["format_version"] == 1001
    assert report["tensors"][0] == {"name": "state_dict.conv.weight", "dtype": "float32", "shape": [4, 3, 3, 3],
                                    "bytes": 432}
    assert report["total_parameters"] == 113 and report["storage_locations"] == {"cuda:0": 3}
    assert report["torch_version"] is None and report["module_trees"] == []


def test_whole_module_tree(tmp_path, capsys):
    path = tmp_path / "m.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()), path)
    code, out, _ = run(["inspect", str(path)], capsys)
    assert code == 0
    assert "module tree:" in out and "  (0): Conv2d(in_channels=1, out_channels=2, kernel_size=(3, 3)" in out
    assert "weights       : top level (whole module torch.nn.modules.container.Sequential)" in out
    report = json.loads(run(["inspect", str(path), "--json"], capsys)[1])
    assert report["module_trees"][0]["children"][0]["class_name"] == "Conv2d"
    assert report["total_parameters"] == 20


def test_torch_version_recorded_in_the_checkpoint(tmp_path, capsys):
    path = tmp_path / "v.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "torch_version": "1.4.0"}, path)
    report = json.loads(run(["inspect", str(path), "--json"], capsys)[1])
    assert report["torch_version"] == "1.4.0 (from the checkpoint's 'torch_version' entry)"


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    (b"", "is empty"),
    (pickle.dumps(os.system, protocol=2), "refusing to load: the pickle refers to posix.system"),
])
def test_errors_exit_2_without_traceback(tmp_path, capsys, content, message):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(["inspect", str(path)], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"tracecap: error: {path}") and message in err and "Traceback" not in err


def test_usage_errors():
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["inspect"])


def test_command_table_accepts_new_commands(capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))

    def options(parser):
        parser.add_argument("word")

    @cli.register("echo", "repeat a word", options)
    def _echo(args):
        print(args.word * 2)
        return 3

    assert {"inspect", "echo"} <= set(cli.COMMANDS)
    assert run(["echo", "ab"], capsys)[:2] == (3, "abab\n")


@pytest.mark.parametrize("launcher", ["module", "script"])
def test_entry_points(ckpt, launcher):
    """``python -m tracecap`` and the installed ``tracecap`` script run the same main()."""
    if launcher == "module":
        argv = [sys.executable, "-m", "tracecap", "inspect", str(ckpt) + ".missing"]
    else:
        script = Path(sys.executable).with_name("tracecap")
        if not script.exists():
            pytest.skip(f"{script} is not installed")
        argv = [str(script), "inspect", str(ckpt), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    if launcher == "module":
        assert done.returncode == 2 and done.stderr.startswith("tracecap: error:") and "no such file" in done.stderr
        assert "Traceback" not in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["total_parameters"] == 113


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real legacy checkpoints not found at {SHARED}")
def test_real_tar_whole_module(capsys):
    code, out, _ = run(["inspect", str(SHARED / "tar_2017-01_spro_char-rnn-classification.pt")], capsys)
    assert code == 0
    assert "format        : tar (torch <= 0.1.9), version 1000" in out
    assert "not imported  : model.RNN, torch.nn.backends.thnn._get_thnn_function_backend" in out
    assert "RNN(hidden_size=128)  [model.RNN]" in out and "total parameters: 26,426" in out


def test_bare_tensor_counts_every_tensor(tmp_path, capsys):
    path = tmp_path / "t.pt"
    torch.save(torch.ones(2, 3), path)
    report = json.loads(run(["inspect", str(path), "--json"], capsys)[1])
    assert report["tensors"] == [{"name": "(the whole object)", "dtype": "float32", "shape": [2, 3], "bytes": 24}]
    assert report["weights"] is None and report["total_parameters"] == 6
    assert report["notes"] == ["no weights found in the checkpoint (top level: Tensor); total parameters counts every tensor"]
