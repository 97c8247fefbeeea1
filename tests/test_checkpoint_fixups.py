"""fix_state_dict (DataParallel prefix, num_batches_tracked, DenseNet names) and find_state_dict."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

from tracecap import CheckpointError
from tracecap.checkpoint import FixReport, ModuleNode, find_state_dict, fix_state_dict, load_checkpoint


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 3)


def old_checkpoint(model, prefix="", drop_nbt=False):
    """The model's weights as an old training script would have saved them."""
    sd = OrderedDict((prefix + k, v.clone()) for k, v in model.state_dict().items()
                     if not (drop_nbt and k.endswith("num_batches_tracked")))
    return sd


def test_perfect_match_changes_nothing():
    model = Small()
    sd = old_checkpoint(model)
    fixed, report = fix_state_dict(sd, model)
    assert report.ok and report.changes == [] and list(fixed) == list(sd)
    assert str(report) == f"{len(sd)} keys match the model"


def test_dataparallel_prefix_is_stripped():
    model = Small()
    sd = old_checkpoint(model, prefix="module.")
    fixed, report = fix_state_dict(sd, model)
    assert report.ok and list(fixed) == list(model.state_dict())
    assert report.changes == ["stripped the 'module.' prefix (nn.DataParallel) from 9 keys"]
    assert all(fixed[k] is sd["module." + k] for k in fixed)  # tensors shared, not copied
    assert list(sd)[0].startswith("module.")  # input untouched
    model.load_state_dict(fixed)


def test_nested_dataparallel_and_the_reverse_direction():
    model = Small()
    fixed, report = fix_state_dict(old_checkpoint(model, prefix="module.module."), model)
    assert report.ok and len(report.changes) == 2
    wrapped = nn.DataParallel(model)
    fixed, report = fix_state_dict(old_checkpoint(model), wrapped)
    assert report.ok and all(k.startswith("module.") for k in fixed)
    assert "added the 'module.' prefix" in report.changes[0]


def test_num_batches_tracked_added_for_pre_0_4_batchnorm():
    model = Small()
    sd = old_checkpoint(model, prefix="module.", drop_nbt=True)
    fixed, report = fix_state_dict(sd, model)
    assert report.ok and report.added == ["bn.num_batches_tracked"]
    assert fixed["bn.num_batches_tracked"].dtype == torch.int64 and fixed["bn.num_batches_tracked"].item() == 0
    assert list(fixed) == list(model.state_dict())  # in the model's order
    model.load_state_dict(fixed)


class DenseLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("norm1", nn.BatchNorm2d(2))
        self.add_module("relu1", nn.ReLU())
        self.add_module("conv1", nn.Conv2d(2, 2, 1))
        self.add_module("norm2", nn.BatchNorm2d(2))


class DenseNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict(denseblock1=nn.Sequential(OrderedDict(denselayer1=DenseLayer()))))
        self.classifier = nn.Linear(2, 2)


def test_old_densenet_dotted_names():
    model = DenseNetLike()
    sd = OrderedDict()
    for k, v in model.state_dict().items():
        for part in ("norm1", "conv1", "norm2"):
            k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        sd[k] = v
    assert "features.denseblock1.denselayer1.norm.1.weight" in sd
    fixed, report = fix_state_dict(sd, model)
    assert report.ok, str(report)
    assert ("features.denseblock1.denselayer1.norm.1.weight",
            "features.denseblock1.denselayer1.norm1.weight") in report.renamed
    assert "old DenseNet-style 'norm.1' names" in report.changes[0]
    model.load_state_dict(fixed)


def test_sequential_indices_are_not_merged_when_the_model_has_them():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    fixed, report = fix_state_dict(old_checkpoint(model), model)
    assert report.ok and report.renamed == []


def test_readable_diff_of_what_still_differs():
    model = Small()
    sd = old_checkpoint(model)
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["conv.weight"] = torch.zeros(2, 1, 5, 5)
    fixed, report = fix_state_dict(sd, model)
    assert not report.ok
    assert report.missing == ["fc.bias"] and report.unexpected == ["extra.weight"]
    assert report.shape_mismatches == [("conv.weight", (2, 1, 5, 5), (2, 1, 3, 3))]
    text = str(report)
    assert text.splitlines()[0] == "7 keys match the model; 1 missing, 1 unexpected, 1 with a different shape"
    assert "  - fc.bias" in text and "  + extra.weight" in text and "  ! conv.weight: [2, 1, 5, 5] vs [2, 1, 3, 3]" in text
    assert list(fixed)[-1] == "extra.weight"  # unexpected keys kept, at the end


def test_long_listings_are_shortened():
    fixed, report = fix_state_dict({f"x{i}": torch.zeros(1) for i in range(30)}, {"y": torch.zeros(1)})
    assert "... and 18 more" in str(report)


def test_targets_can_be_key_lists_state_dicts_or_module_nodes(tmp_path):
    model = Small()
    sd = old_checkpoint(model, prefix="module.")
    torch.save(model, tmp_path / "whole.pt")
    node = load_checkpoint(tmp_path / "whole.pt")
    assert isinstance(node, ModuleNode)
    for target in (list(model.state_dict()), model.state_dict(), node):
        assert fix_state_dict(sd, target)[1].ok
    with pytest.raises(TypeError, match="target_model must be"):
        fix_state_dict(sd, 42)
    with pytest.raises(CheckpointError, match="use find_state_dict"):
        fix_state_dict([1, 2], model)
    assert isinstance(fix_state_dict(sd, model)[1], FixReport)


class TestFindStateDict:
    sd = OrderedDict(w=torch.ones(2), b=torch.zeros(1))

    def test_bare_state_dict(self):
        weights, report = find_state_dict(self.sd)
        assert weights is self.sd and report.source == "top level (state dict)" and report.others == {}

    def test_conventional_checkpoint_dict(self):
        ckpt = {"epoch": 90, "arch": "resnet18", "state_dict": self.sd, "best_acc1": torch.tensor(71.5),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
        weights, report = find_state_dict(ckpt)
        assert weights is self.sd and report.source == "['state_dict'] (state dict)"
        assert report.others == {"epoch": "90", "arch": "'resnet18'", "best_acc1": "tensor(71.5)",
                                 "optimizer": "optimizer state (1 param groups)"}
        assert str(report).splitlines() == ["weights: ['state_dict'] (state dict)", "  epoch: 90", "  arch: 'resnet18'",
                                            "  best_acc1: tensor(71.5)", "  optimizer: optimizer state (1 param groups)"]

    def test_preferred_names_win_over_size(self):
        big = {f"k{i}": torch.zeros(1) for i in range(10)}
        weights, _ = find_state_dict({"ema_backup": big, "model": self.sd})
        assert weights is self.sd

    def test_nested_and_unconventional_names(self):
        weights, report = find_state_dict({"checkpoint": {"weights_v2": self.sd}, "step": 3})
        assert weights is self.sd and report.source == "['checkpoint']['weights_v2'] (state dict)"

    def test_largest_mapping_when_no_name_matches(self):
        small = OrderedDict(a=torch.ones(1))
        weights, _ = find_state_dict({"g": small, "d": self.sd})
        assert weights is self.sd

    def test_nothing_to_find(self):
        with pytest.raises(CheckpointError, match="no weights found in the checkpoint .top level: 'epoch', 'acc'."):
            find_state_dict({"epoch": 1, "acc": 0.5})
        with pytest.raises(CheckpointError, match="no weights found"):
            find_state_dict([1, 2])
