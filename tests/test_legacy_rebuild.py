"""Whole-module checkpoints (``torch.save(model)``) as convert SPECs, rebuilt without running the file.

Files are written by ``torch.save`` here (zip and legacy formats), rebuilt by
``tracecap.legacy`` from the safe reader's module tree and converted on both real runtimes; the
real whole-module files of ../shared give the "needs these classes" error; a file whose class
would run code on import is converted (refused) without that code running.
"""
import glob
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conversion import check
from tracecap import CheckpointError, cli
from tracecap import legacy_models as zoo
from tracecap.legacy import RevivalError, resolve_checkpoint_spec

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "legacy-checkpoints")


def standard_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                          nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(6, 4, 3, stride=2, bias=False),
                          nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 5), nn.Softmax(dim=1))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def rebuilt(path, code=None):
    model, shape, name = resolve_checkpoint_spec(str(path), code=code)
    assert shape is None and name
    return model


@pytest.mark.parametrize("legacy_format", [False, True])
def test_sequential_of_standard_layers_converts(runtime, tmp_path, legacy_format):
    original = standard_sequential()
    path = tmp_path / "seq.pth"
    torch.save(original, path, _use_new_zipfile_serialization=not legacy_format)
    model = rebuilt(path)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
    check(model, [x], runtime, tmp_path)


MYNET = textwrap.dedent("""
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.conv = nn.Conv2d(n, n, 3, padding=1)
            self.bn = nn.BatchNorm2d(n)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)) + x)

    class MyNet(nn.Module):
        def __init__(self, width=4, scale=0.5):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, padding=1)
            self.block = Block(width)
            self.fc = nn.Linear(width, 3)
            self.scale = scale
            self.act = F.relu

        def forward(self, x):
            x = self.block(self.act(self.stem(x)))
            return self.fc(x.mean(3).mean(2) * self.scale)
""")


@pytest.fixture
def custom_checkpoint(tmp_path):
    code = tmp_path / "mynet.py"
    code.write_text(MYNET)
    sys.path.insert(0, str(tmp_path))
    try:
        import mynet
        torch.manual_seed(3)
        model = mynet.MyNet(width=4, scale=0.25).eval()
        path = tmp_path / "whole.pth"
        torch.save(model, path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynet", None)
    return path, code, model


def test_custom_class_needs_code(custom_checkpoint):
    path, _, _ = custom_checkpoint
    with pytest.raises(RevivalError) as err:
        rebuilt(path)
    text = str(err.value)
    assert "needs classes tracecap does not have: mynet.Block, mynet.MyNet" in text
    assert "mynet.Block at block" in text and "--code FILE.py" in text


def test_custom_class_with_code_converts(runtime, custom_checkpoint, tmp_path):
    path, code, original = custom_checkpoint
    model = rebuilt(path, code=code)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
    assert model.body.scale == 0.25 and model.body.act is F.relu
    check(model, [x], runtime, tmp_path)


def test_cli_convert_whole_module_with_code(custom_checkpoint, tmp_path, capsys):
    path, code, _ = custom_checkpoint
    out = tmp_path / "out"
    assert cli.main(["convert", str(path), "--input", "1x3x8x8", "-o", str(out), "--quiet"]) == 2
    assert "--code FILE.py" in capsys.readouterr().err
    assert cli.main(["convert", str(path), "--code", str(code), "--input", "1x3x8x8", "-o", str(out),
                     "--dialect", "opencv", "--verify", "--quiet"]) == 0
    assert (out / "whole.prototxt").exists()


def test_zoo_architecture_is_recognised(tmp_path):
    original = zoo.build("lenet", seed=4)
    path = tmp_path / "lenet_whole.pth"
    torch.save(original, path)
    model = rebuilt(path)
    x = zoo.example_input("lenet", seed=1)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
    other = zoo.build("lenet", seed=4, activation="tanh")  # same keys and shapes, other forward
    torch.save(other, path)
    with pytest.raises(RevivalError, match="LeNet"):
        rebuilt(path)


def test_old_attributes_keep_old_semantics(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Upsample(scale_factor=2, mode="bilinear")).eval()
    del model[1].track_running_stats  # as pickled by torch 0.3
    del model[2].align_corners
    path = tmp_path / "old.pth"
    torch.save(model, path)
    revived = rebuilt(path)
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        want = F.interpolate(F.batch_norm(model[0](x), model[1].running_mean, model[1].running_var,
                                          model[1].weight, model[1].bias, False, 0.0, model[1].eps),
                             scale_factor=2, mode="bilinear", align_corners=True)
        assert torch.allclose(revived(x), want, atol=1e-6)
    assert revived.body[2].align_corners is True and revived.body[1].track_running_stats is True


def test_state_dict_file_is_not_a_model(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(standard_sequential().state_dict(), path)
    with pytest.raises(RevivalError, match="holds no whole module .* with --weights"):
        rebuilt(path)


def test_code_needs_a_checkpoint_spec():
    with pytest.raises(RevivalError, match="--code applies to a whole-module checkpoint SPEC"):
        resolve_checkpoint_spec("lenet", code="x.py")


@pytest.mark.parametrize("name,needed", [
    ("legacy_2018-06_haojial_ckpt_whole_module.t7", "models.mynet.MyNet"),
    ("zip_2022-05_joseprs_model001_whole_module.t7", "model.ActionClassifier"),
    ("tar_2017-01_spro_char-rnn-classification.pt", "model.RNN"),
])
def test_real_whole_module_files_name_the_classes_they_need(name, needed):
    path = os.path.join(SHARED, name)
    if not os.path.exists(path):
        pytest.skip("../shared/legacy-checkpoints is absent")
    with pytest.raises(RevivalError, match=f"needs classes tracecap does not have: {needed} "):
        rebuilt(path)


def test_real_state_dict_files_are_refused_with_advice():
    files = glob.glob(os.path.join(SHARED, "legacy_2018-08_chenchingchih_ckpt.t7"))
    if not files:
        pytest.skip("../shared/legacy-checkpoints is absent")
    with pytest.raises(RevivalError, match="with --weights"):
        rebuilt(files[0])


EVIL = textwrap.dedent("""
    import os
    import torch.nn as nn
    open(os.environ["TRACECAP_CANARY"], "w").write("the module ran")

    class EvilNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)
""")


def test_nothing_from_the_file_runs(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "evilpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(EVIL)
    path, saved_canary, canary = tmp_path / "evil.pth", tmp_path / "saved", tmp_path / "canary"
    code = f"import sys, torch; sys.path.insert(0, {str(tmp_path)!r}); import evilpkg; " \
           f"torch.save(evilpkg.EvilNet(), {str(path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TRACECAP_CANARY": str(saved_canary)},
                   timeout=120)
    assert saved_canary.exists()  # importing the class does run code
    monkeypatch.setenv("TRACECAP_CANARY", str(canary))
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, were anything to import it
    rc = cli.main(["convert", str(path), "--input", "1x2", "-o", str(tmp_path / "out"), "--quiet"])
    assert rc == 2 and "evilpkg.EvilNet" in capsys.readouterr().err
    assert not canary.exists() and "evilpkg" not in sys.modules


def test_code_execution_payload_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    path = tmp_path / "payload.pth"
    torch.save({"net": Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        rebuilt(path)
    assert not (tmp_path / "ran").exists()
