"""The 13 real checkpoints from 2017-2022 in ../shared/legacy-checkpoints (see its README).

For every file: what it must contain, and the same tensors as torch.load(weights_only=False).
Where torch needs classes that no longer exist (the authors' model.py, torchtext, onmt), the
comparison runs with empty stand-in classes registered in sys.modules for the test only — the
point being that tracecap needs no such help.
"""
import sys
import types
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import nn

from tracecap.checkpoint import ModuleNode, Opaque, find_state_dict, fix_state_dict, load_checkpoint, read_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared" / "legacy-checkpoints"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real legacy checkpoints not found at {SHARED}")

TAR_RNN = "tar_2017-01_spro_char-rnn-classification.pt"
CNN = "legacy_2017-05_l1ao_cnn.pth"
ONMT_CPU = "legacy_2017-08_onmt_test_model2_cpu.pt"
ONMT_CUDA = "legacy_2017-09_onmt_test_model2_cuda.pt"
CGCNN_2018 = "legacy_2018-03_cgcnn_formation-energy-per-atom.pth.tar"
WHOLE_MYNET = "legacy_2018-06_haojial_ckpt_whole_module.t7"
RESNET_DP = "legacy_2018-08_chenchingchih_ckpt.t7"
CGCNN_2019 = "legacy_2019-05_cgcnn_model_best.pth.tar"
ZIP_CKPT = "zip_2022-05_joseprs_ckpt.t7"
ZIP_WHOLE = "zip_2022-05_joseprs_model001_whole_module.t7"
PY2_LIST = "legacy_py2-torch0.4.1_list.pt"
CUDA_RANDN = "legacy_cuda_randn2_tensor.pt"
BIG_ENDIAN = "zip_bigendian_lstm_state_dict.pt"
ALL = [TAR_RNN, CNN, ONMT_CPU, ONMT_CUDA, CGCNN_2018, WHOLE_MYNET, RESNET_DP, CGCNN_2019, ZIP_CKPT, ZIP_WHOLE,
       PY2_LIST, CUDA_RANDN, BIG_ENDIAN]


def load(name):
    return read_checkpoint(SHARED / name)


def _key(key, index):
    return key if isinstance(key, str) else repr(key) if isinstance(key, (int, float, bool)) else f"#{index}"


def tensor_paths(obj, path="", out=None, seen=None):
    """Every tensor reachable from ``obj`` (real objects or tracecap placeholders) by path."""
    out = {} if out is None else out
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        out[path] = obj
        return out
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    if isinstance(obj, Opaque):
        obj = obj.attributes()
    elif not isinstance(obj, (Mapping, list, tuple)) and hasattr(obj, "__dict__"):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        for i, (k, v) in enumerate(obj.items()):
            tensor_paths(v, f"{path}.{_key(k, i)}", out, seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            tensor_paths(v, f"{path}[{i}]", out, seen)
    return out


@pytest.fixture
def stand_ins(monkeypatch):
    """Empty classes under the names old pickles use, so torch.load can run for comparison."""
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    class _Stub:
        pass

    def stub_module(name):
        return type(name, (nn.Module,), {})

    module("model", RNN=stub_module("RNN"), ActionClassifier=stub_module("ActionClassifier"))
    module("models")
    module("models.mynet", MyNet=stub_module("MyNet"))
    module("torchtext")
    module("torchtext.vocab", Vocab=type("Vocab", (_Stub,), {}))
    module("onmt")
    module("onmt.Optim", Optim=type("Optim", (_Stub,), {}))
    module("torch.nn.backends.thnn", _get_thnn_function_backend=lambda: None)
    # 2017 optimizers lack attributes today's Optimizer.__setstate__ insists on
    monkeypatch.setattr(sys.modules["torch.optim.sgd"], "SGD", type("SGD", (_Stub,), {}))
    monkeypatch.setattr(sys.modules["torch.optim.adam"], "Adam", type("Adam", (_Stub,), {}))


@pytest.mark.parametrize("name", ALL)
def test_same_tensors_as_torch_load(name, stand_ins):
    ours = load(name).obj
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.load(SHARED / name, map_location="cpu", weights_only=False)
    a, b = tensor_paths(ours), tensor_paths(theirs)
    assert a and list(a) == list(b)
    for path in a:
        x, y = a[path], b[path]
        assert x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride(), path
        assert torch.equal(x, y), path
        assert x.device.type == "cpu"


def test_tar_char_rnn_whole_module():
    ck = load(TAR_RNN)
    rnn = ck.obj
    assert ck.info.format == "tar" and ck.info.format_version == 1000
    assert isinstance(rnn, ModuleNode) and rnn.class_path == "model.RNN" and rnn.attrs["hidden_size"] == 128
    assert list(rnn.children) == ["i2h", "i2o", "softmax"]
    assert rnn.i2h.class_name == "Linear" and rnn.i2h.attrs["in_features"] == 180
    assert rnn.softmax.class_name == "LogSoftmax"
    sd = rnn.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "i2h.weight": (128, 180), "i2h.bias": (128,), "i2o.weight": (18, 180), "i2o.bias": (18,)}
    assert all(isinstance(p, nn.Parameter) for p in sd.values())
    assert ck.info.module_sources["model.RNN"].endswith("char-rnn-classification/model.py")
    assert "class RNN(nn.Module)" in [c for c in [rnn.class_ref.source] if c][0]


def test_legacy_cnn_state_dict_saved_on_cuda():
    ck = load(CNN)
    assert isinstance(ck.obj, OrderedDict) and len(ck.obj) == 10
    assert list(ck.obj)[:2] == ["conv.0.weight", "conv.0.bias"] and ck.obj["fc.0.weight"].shape == (120, 400)
    assert ck.info.locations == {"cuda:0": 10} and ck.info.writer == "torch 0.1.10 - 0.3"


@pytest.mark.parametrize("name,epoch,optimizer,location,rnn_size,src_words", [
    (ONMT_CPU, 13, "torch.optim.sgd.SGD", "cpu", 150, 71), (ONMT_CUDA, 10, "torch.optim.adam.Adam", "cuda:0", 100, 69)])
def test_opennmt_checkpoints_with_foreign_objects(name, epoch, optimizer, location, rnn_size, src_words):
    ck = load(name)
    obj = ck.obj
    assert set(obj) == {"model", "generator", "vocab", "opt", "epoch", "optim"} and obj["epoch"] == epoch
    assert isinstance(obj["opt"], Opaque) and obj["opt"].class_path == "argparse.Namespace"
    assert obj["opt"].rnn_size == rnn_size and obj["opt"].optim == optimizer.rsplit(".", 1)[1].lower()
    assert [v[0] for v in obj["vocab"]] == ["src", "tgt"]
    assert obj["vocab"][0][1].class_path == "torchtext.vocab.Vocab" and len(obj["vocab"][0][1].itos) == src_words
    assert obj["optim"].class_path == "onmt.Optim.Optim" and obj["optim"].optimizer.class_path == optimizer
    assert set(ck.info.locations) == {location}
    weights, report = find_state_dict(obj)
    assert weights is obj["model"] and "generator" in report.others and report.others["epoch"] == str(epoch)
    assert "torchtext.vocab.Vocab" in ck.info.classes


def test_cgcnn_2018_checkpoint_dict():
    obj = load(CGCNN_2018).obj
    assert obj["epoch"] == 968 and isinstance(obj["best_mae_error"], float)
    groups = obj["optimizer"]["param_groups"]
    assert groups[0]["momentum"] == 0.9 and all(isinstance(k, int) for k in obj["optimizer"]["state"])
    assert set(obj["normalizer"]) == {"mean", "std"}
    weights, report = find_state_dict(obj)
    assert weights is obj["state_dict"] and report.others["epoch"] == "968"
    assert report.others["optimizer"] == "optimizer state (1 param groups)"


def test_whole_module_mynet_without_its_class():
    ck = load(WHOLE_MYNET)
    net = ck.obj["net"]
    assert ck.obj["epoch"] == 101 and isinstance(net, ModuleNode) and net.class_path == "models.mynet.MyNet"
    assert [(n, c.class_name) for n, c in net.children.items()] == [
        ("conv1", "Conv2d"), ("bn1", "BatchNorm2d"), ("conv2", "Conv2d"), ("bn2", "BatchNorm2d"),
        ("fc1", "Linear"), ("fc3", "Linear")]
    assert net.conv1.attrs["kernel_size"] == (7, 7) and net.conv1.attrs["stride"] == (1, 1)
    assert net.fc1.attrs["in_features"] == 16 * 21 * 21
    assert "models.mynet.MyNet" not in sys.modules and "models" not in sys.modules
    sd, report = find_state_dict(ck.obj)
    assert "whole module models.mynet.MyNet" in report.source and len(sd) == 16
    summary = net.summary()
    assert "(conv1): Conv2d(" in summary and "kernel_size=(7, 7)" in summary and "total parameters: 850,430" in summary


class CifarBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class CifarResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(*[CifarBlock(16, 16, 1) for _ in range(3)])
        self.layer2 = nn.Sequential(CifarBlock(16, 32, 2), CifarBlock(32, 32, 1), CifarBlock(32, 32, 1))
        self.layer3 = nn.Sequential(CifarBlock(32, 64, 2), CifarBlock(64, 64, 1), CifarBlock(64, 64, 1))
        self.linear = nn.Linear(64, 10)


def test_dataparallel_resnet_fixes_into_todays_model():
    ck = load(RESNET_DP)
    sd, _ = find_state_dict(ck.obj)
    assert len(sd) == 107 and all(k.startswith("module.") for k in sd)
    model = CifarResNet20()
    fixed, report = fix_state_dict(sd, model)
    assert report.ok, str(report)
    assert len(report.added) == 21 and all(k.endswith("num_batches_tracked") for k in report.added)
    model.load_state_dict(fixed)  # strict: every key and shape accepted
    assert torch.equal(model.layer3[0].shortcut[0].weight, sd["module.layer3.0.shortcut.0.weight"])


def test_cgcnn_2019_zero_dim_tensor_and_num_batches_tracked():
    ck = load(CGCNN_2019)
    obj = ck.obj
    assert obj["best_mae_error"].dim() == 0 and obj["best_mae_error"].dtype == torch.float32
    nbt = [v for k, v in obj["state_dict"].items() if k.endswith("num_batches_tracked")]
    assert nbt and all(v.dtype == torch.int64 and v.dim() == 0 for v in nbt)
    assert ck.info.locations == {"cpu": len(ck.info.storages)} and ck.info.writer == "torch 0.4 - 1.5"


def test_zip_checkpoint_dict_from_cuda():
    ck = load(ZIP_CKPT)
    assert set(ck.obj) == {"epoch", "valid_acc", "valid_loss", "state_dict", "optimizer"}
    assert ck.info.format == "zip" and ck.info.records["version"] == "3" and set(ck.info.locations) == {"cuda:0"}
    assert "exp_avg" in next(iter(ck.obj["optimizer"]["state"].values()))


def test_zip_whole_module_action_classifier():
    ck = load(ZIP_WHOLE)
    m = ck.obj
    assert isinstance(m, ModuleNode) and m.class_path == "model.ActionClassifier"
    assert m.pool_layer.class_name == "MaxPool1d" and m.pool_layer.attrs["kernel_size"] == 161
    assert (m.fc.attrs["in_features"], m.fc.attrs["out_features"]) == (128, 17)
    assert list(m.state_dict()) == ["fc.weight", "fc.bias"]
    assert isinstance(m.fc.weight, nn.Parameter)
    assert "torch._utils._rebuild_parameter" in ck.info.rebuilders


def test_python2_list_with_utf8_text():
    ck = load(PY2_LIST)
    text, tensor, number = ck.obj
    assert text == "żąąóżąż" and torch.equal(tensor, torch.zeros(1)) and number == 2
    assert ck.info.python2 and ck.info.writer.endswith("Python 2")


def test_bare_cuda_tensor():
    ck = load(CUDA_RANDN)
    assert isinstance(ck.obj, torch.Tensor) and ck.obj.shape == (2,) and ck.obj.device.type == "cpu"
    assert ck.info.locations == {"cuda:0": 1}


def test_big_endian_zip_lstm():
    ck = load(BIG_ENDIAN)
    assert ck.info.byteorder == "big"
    assert list(ck.obj) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    lstm = nn.LSTM(3, 3)
    lstm.load_state_dict(ck.obj)  # right shapes; values plausible only if bytes were swapped
    assert all(v.abs().max() < 1 for v in ck.obj.values())  # LSTM(3, 3) init is U(-1/sqrt(3), 1/sqrt(3))


def test_every_file_loads_safely_with_load_checkpoint():
    for name in ALL:
        assert load_checkpoint(SHARED / name) is not None
