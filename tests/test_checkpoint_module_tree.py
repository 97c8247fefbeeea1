"""Whole-module pickles read as ModuleNode trees, with the model's class code unavailable."""
import json
import sys
import textwrap
import warnings

import pytest
import torch

import checkpoint_fixtures as fx
from tracecap.checkpoint import ModuleNode, Opaque, find_state_dict, load_checkpoint, read_checkpoint
from tracecap.checkpoint.module_tree import looks_like_module

MODEL_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)
            self.register_buffer("scratch", torch.full((2,), 7.0), persistent=False)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, kernel_size=(5, 3), stride=1)
            self.blocks = nn.Sequential(Block(4), Block(4))
            self.shared = self.blocks[0]          # the same module under two names
            self.head = nn.Linear(4, 10)
            self.scale = nn.Parameter(torch.tensor(0.5))
            self.tag = "v1"
''')


@pytest.fixture
def saved_models(tmp_path, monkeypatch):
    """A model whose class lives in a module that no longer exists when the files are read."""
    (tmp_path / "vanishing_models.py").write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_models
    torch.manual_seed(0)
    net = vanishing_models.Net()
    files = {"zip": tmp_path / "zip.pt", "legacy": tmp_path / "legacy.pt"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(net, files["zip"])
        torch.save(net, files["legacy"], _use_new_zipfile_serialization=False)
    del sys.modules["vanishing_models"]
    (tmp_path / "vanishing_models.py").unlink()
    with pytest.raises(ModuleNotFoundError):
        torch.load(files["zip"], weights_only=False)  # torch cannot read them any more
    return net, files


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_tree_structure_and_attributes(saved_models, fmt):
    net, files = saved_models
    root = load_checkpoint(files[fmt])
    assert isinstance(root, ModuleNode) and root.class_path == "vanishing_models.Net"
    assert root.class_name == "Net" and root.attrs["tag"] == "v1" and root.attrs["training"] is True
    assert list(root.children) == ["stem", "blocks", "shared", "head"]
    assert root.shared is root.blocks.children["0"]  # shared module stays one node
    assert root.stem.class_path == "torch.nn.modules.conv.Conv2d"
    assert root.stem.attrs["kernel_size"] == (5, 3) and root.blocks.children["1"].conv.attrs["stride"] == (2, 2)
    assert root.blocks.children["0"].conv.parameters == {"weight": root.blocks.children["0"].conv.weight, "bias": None}
    assert list(root.parameters) == ["scale"] and isinstance(root.scale, torch.nn.Parameter)
    assert "vanishing_models" not in sys.modules


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_state_dict_matches_the_real_model(saved_models, fmt):
    net, files = saved_models
    root = load_checkpoint(files[fmt])
    expected = net.state_dict()
    got = root.state_dict()
    assert list(got) == list(expected)  # same keys, same order (incl. the shared module twice)
    assert "blocks.0.scratch" not in got  # non-persistent buffer
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert root.num_parameters() == sum(p.numel() for p in net.parameters())


def test_legacy_whole_module_records_class_sources(saved_models):
    _, files = saved_models
    info = read_checkpoint(files["legacy"]).info
    assert info.module_sources["vanishing_models.Net"].endswith("vanishing_models.py")
    assert "vanishing_models.Block" in info.classes


def test_summary_and_tree(saved_models):
    _, files = saved_models
    root = load_checkpoint(files["zip"])
    text = root.summary()
    lines = text.splitlines()
    assert lines[0] == "Net(tag='v1')  [vanishing_models.Net]"
    assert "  (stem): Conv2d(in_channels=3, out_channels=4, kernel_size=(5, 3), stride=(1, 1)" in text
    assert "        param weight: float32 [4, 4, 3, 3]" in lines
    assert "        param bias: None" in lines
    assert "        buffer scratch: float32 [2]" in lines
    assert lines[-1] == "total parameters: 539"  # 184 stem + 2 x 152 blocks + 50 head + 1 scale
    tree = json.loads(json.dumps(root.tree()))
    assert tree["class_name"] == "Net" and [c["name"] for c in tree["children"]] == ["stem", "blocks", "shared", "head"]
    assert tree["children"][0]["parameters"]["weight"] == {"dtype": "float32", "shape": [4, 3, 5, 3]}


def test_find_state_dict_on_whole_module(saved_models):
    net, files = saved_models
    sd, report = find_state_dict({"model": load_checkpoint(files["zip"]), "epoch": 4})
    assert list(sd) == list(net.state_dict())
    assert report.source == "['model'] (whole module vanishing_models.Net)" and report.others == {"epoch": "4"}


def test_cyclic_module_tree_terminates():
    from tracecap.checkpoint.placeholders import ClassRef
    node = Opaque(ClassRef("m", "Loop"))
    node.state = {"_parameters": {"w": torch.ones(1)}, "_buffers": {}, "_modules": {}}
    node = ModuleNode.adopt(node)
    node.state["_modules"]["self"] = node
    assert list(node.state_dict()) == ["w"]
    assert len(node.named_modules()) == 1 and "total parameters: 1" in node.summary()


def test_module_detection_needs_module_bookkeeping():
    assert looks_like_module({"_parameters": {}, "_buffers": {}, "_modules": {}})
    assert not looks_like_module({"state": {}, "param_groups": []})


def test_old_parameter_and_variable_pickles_in_tar(tmp_path):
    p = torch.nn.Parameter(torch.arange(4.0))
    path = tmp_path / "old.pt"
    path.write_bytes(fx.tar_bytes({"p": p, "plain": torch.ones(2)}))
    obj = load_checkpoint(path)
    assert isinstance(obj["p"], torch.nn.Parameter) and obj["p"].requires_grad
    assert torch.equal(obj["p"].detach(), torch.arange(4.0)) and not isinstance(obj["plain"], torch.nn.Parameter)
