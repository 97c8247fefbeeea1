"""The 2017 torchvision zoo in legacy_models: keys and shapes of the published files, and
2017-layout weight files that load strictly and convert.

The published checkpoints (torchvision 0.1.9-0.2.0, ``download.pytorch.org/models/NAME``)
are not shipped here, so their layout is written down below as facts: file name, tensor
count, the module indices torchvision used, a few exact shapes. Pre-0.4 files have no
``num_batches_tracked``, and DenseNet's name its dense layers' modules ``norm.1``,
``conv.1`` ... (today's PyTorch refuses dots in module names), which
``tracecap.fix_state_dict`` renames. The tables are written independently of the model code.
"""
import json
import os
import re
from collections import OrderedDict

import pytest
import torch

import tracecap
from tracecap import cli, legacy_models as zoo, runtimes
from tracecap.checkpoint import find_state_dict

from checkpoint_fixtures import legacy_bytes
from conversion import max_diff

# name -> (published file, number of tensors in it)
ORIGINAL_FILES = {
    "alexnet": ("alexnet-owt-4df8aa71.pth", 16),
    "vgg11": ("vgg11-bbd30ac9.pth", 22),
    "vgg13": ("vgg13-c768596a.pth", 26),
    "vgg16": ("vgg16-397923af.pth", 32),
    "vgg19": ("vgg19-dcbb9e9d.pth", 38),
    "vgg11_bn": ("vgg11_bn-6002323d.pth", 54),
    "vgg13_bn": ("vgg13_bn-abd245e5.pth", 66),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth", 84),
    "vgg19_bn": ("vgg19_bn-c79401a0.pth", 102),
    "resnet18": ("resnet18-5c106cde.pth", 102),
    "resnet34": ("resnet34-333f7ec4.pth", 182),
    "resnet50": ("resnet50-19c8e357.pth", 267),
    "resnet101": ("resnet101-5d3b4d8f.pth", 522),
    "resnet152": ("resnet152-b121ed2d.pth", 777),
    "squeezenet1_0": ("squeezenet1_0-a815701f.pth", 52),
    "squeezenet1_1": ("squeezenet1_1-f364aa15.pth", 52),
    "densenet121": ("densenet121-a639ec97.pth", 606),
    "densenet169": ("densenet169-b2777c0a.pth", 846),
    "densenet201": ("densenet201-c1103571.pth", 1006),
    "densenet161": ("densenet161-8d451a50.pth", 806),
    "inception_v3": ("inception_v3_google-1a9a5a14.pth", 484),
}

# a few exact shapes per file (original key names)
SHAPES = {
    "alexnet": {"features.0.weight": (64, 3, 11, 11), "features.10.weight": (256, 256, 3, 3),
                "classifier.1.weight": (4096, 9216), "classifier.6.bias": (1000,)},
    "vgg16": {"features.28.weight": (512, 512, 3, 3), "classifier.0.weight": (4096, 25088)},
    "vgg16_bn": {"features.40.weight": (512, 512, 3, 3), "features.41.running_var": (512,),
                 "classifier.6.weight": (1000, 4096)},
    "vgg19_bn": {"features.49.weight": (512, 512, 3, 3), "features.50.running_mean": (512,)},
    "resnet18": {"conv1.weight": (64, 3, 7, 7), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                 "layer4.1.conv2.weight": (512, 512, 3, 3), "fc.weight": (1000, 512)},
    "resnet50": {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.1.running_var": (256,),
                 "layer4.0.downsample.0.weight": (2048, 1024, 1, 1), "fc.weight": (1000, 2048)},
    "resnet101": {"layer3.22.conv2.weight": (256, 256, 3, 3)},
    "resnet152": {"layer2.7.bn3.weight": (512,), "layer3.35.conv3.weight": (1024, 256, 1, 1)},
    "squeezenet1_0": {"features.0.weight": (96, 3, 7, 7), "features.12.expand3x3.weight": (256, 64, 3, 3),
                      "classifier.1.weight": (1000, 512, 1, 1)},
    "squeezenet1_1": {"features.0.weight": (64, 3, 3, 3), "features.12.squeeze.weight": (64, 512, 1, 1)},
    "densenet121": {"features.denseblock1.denselayer1.norm.1.weight": (64,),
                    "features.denseblock4.denselayer16.conv.2.weight": (32, 128, 3, 3),
                    "features.transition1.conv.weight": (128, 256, 1, 1), "classifier.weight": (1000, 1024)},
    "densenet169": {"features.norm5.running_mean": (1664,), "classifier.weight": (1000, 1664)},
    "densenet201": {"features.denseblock3.denselayer48.conv.1.weight": (128, 1760, 1, 1),
                    "classifier.weight": (1000, 1920)},
    "densenet161": {"features.conv0.weight": (96, 3, 7, 7), "features.denseblock1.denselayer1.conv.1.weight":
                    (192, 96, 1, 1), "classifier.weight": (1000, 2208)},
    "inception_v3": {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_1a_3x3.bn.running_var": (32,),
                     "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
                     "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
                     "AuxLogits.conv1.conv.weight": (768, 128, 5, 5), "AuxLogits.fc.weight": (1000, 768),
                     "fc.weight": (1000, 2048)},
}

# ---- full key lists, from the layouts torchvision published -------------------------------
VGG_CONV_INDICES = {
    "vgg11": [0, 3, 6, 8, 11, 13, 16, 18],
    "vgg13": [0, 2, 5, 7, 10, 12, 15, 17, 20, 22],
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
    "vgg11_bn": [0, 4, 8, 11, 15, 18, 22, 25],
    "vgg13_bn": [0, 3, 7, 10, 14, 17, 21, 24, 28, 31],
    "vgg16_bn": [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40],
    "vgg19_bn": [0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36, 40, 43, 46, 49],
}
VGG_WIDTHS = {  # conv output channels in order, per depth
    11: [64, 128, 256, 256] + [512] * 4,
    13: [64, 64, 128, 128, 256, 256] + [512] * 4,
    16: [64, 64, 128, 128, 256, 256, 256] + [512] * 6,
    19: [64, 64, 128, 128] + [256] * 4 + [512] * 8,
}
# feature index -> (input channels, squeeze, expand) of each Fire; stem conv shape
SQUEEZENET = {
    "squeezenet1_0": ((96, 3, 7, 7), {3: (96, 16, 64), 4: (128, 16, 64), 5: (128, 32, 128), 7: (256, 32, 128),
                                      8: (256, 48, 192), 9: (384, 48, 192), 10: (384, 64, 256),
                                      12: (512, 64, 256)}),
    "squeezenet1_1": ((64, 3, 3, 3), {3: (64, 16, 64), 4: (128, 16, 64), 6: (128, 32, 128), 7: (256, 32, 128),
                                      9: (256, 48, 192), 10: (384, 48, 192), 11: (384, 64, 256),
                                      12: (512, 64, 256)}),
}
# (bottleneck?, blocks per stage)
RESNETS = {"resnet18": (False, (2, 2, 2, 2)), "resnet34": (False, (3, 4, 6, 3)),
           "resnet50": (True, (3, 4, 6, 3)), "resnet101": (True, (3, 4, 23, 3)),
           "resnet152": (True, (3, 8, 36, 3))}
# (stem channels, growth rate, layers per dense block); bottleneck width 4 x growth
DENSENETS = {"densenet121": (64, 32, (6, 12, 24, 16)), "densenet169": (64, 32, (6, 12, 32, 32)),
             "densenet201": (64, 32, (6, 12, 48, 32)), "densenet161": (96, 48, (6, 12, 36, 24))}


def _bn(prefix, channels):
    return [(f"{prefix}.{k}", (channels,)) for k in ("weight", "bias", "running_mean", "running_var")]


def _vgg_keys(name):
    widths = VGG_WIDTHS[int(name[3:5])]
    keys, cin = [], 3
    for index, cout in zip(VGG_CONV_INDICES[name], widths):
        keys += [(f"features.{index}.weight", (cout, cin, 3, 3)), (f"features.{index}.bias", (cout,))]
        if name.endswith("_bn"):
            keys += _bn(f"features.{index + 1}", cout)
        cin = cout
    for index, shape in ((0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))):
        keys += [(f"classifier.{index}.weight", shape), (f"classifier.{index}.bias", shape[:1])]
    return keys


def _squeezenet_keys(name):
    stem, fires = SQUEEZENET[name]
    keys = [("features.0.weight", stem), ("features.0.bias", stem[:1])]
    for index, (cin, s, e) in fires.items():
        for conv, shape in (("squeeze", (s, cin, 1, 1)), ("expand1x1", (e, s, 1, 1)), ("expand3x3", (e, s, 3, 3))):
            keys += [(f"features.{index}.{conv}.weight", shape), (f"features.{index}.{conv}.bias", shape[:1])]
    return keys + [("classifier.1.weight", (1000, 512, 1, 1)), ("classifier.1.bias", (1000,))]


def _resnet_keys(name):
    bottleneck, counts = RESNETS[name]
    keys = [("conv1.weight", (64, 3, 7, 7))] + _bn("bn1", 64)
    cin = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), counts), 1):
        cout = planes * 4 if bottleneck else planes
        for block in range(count):
            p = f"layer{stage}.{block}"
            if bottleneck:
                convs = [(planes, cin, 1), (planes, planes, 3), (cout, planes, 1)]
            else:
                convs = [(planes, cin, 3), (planes, planes, 3)]
            for i, (o, c, k) in enumerate(convs, 1):
                keys += [(f"{p}.conv{i}.weight", (o, c, k, k))] + _bn(f"{p}.bn{i}", o)
            if block == 0 and (stage > 1 or cin != cout):
                keys += [(f"{p}.downsample.0.weight", (cout, cin, 1, 1))] + _bn(f"{p}.downsample.1", cout)
            cin = cout
    return keys + [("fc.weight", (1000, cin)), ("fc.bias", (1000,))]


def _densenet_keys(name):
    stem, k, blocks = DENSENETS[name]
    keys = [("features.conv0.weight", (stem, 3, 7, 7))] + _bn("features.norm0", stem)
    c = stem
    for b, count in enumerate(blocks, 1):
        for i in range(1, count + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            keys += _bn(f"{p}.norm.1", c) + [(f"{p}.conv.1.weight", (4 * k, c, 1, 1))]
            keys += _bn(f"{p}.norm.2", 4 * k) + [(f"{p}.conv.2.weight", (k, 4 * k, 3, 3))]
            c += k
        if b < len(blocks):
            keys += _bn(f"features.transition{b}.norm", c) + [(f"features.transition{b}.conv.weight",
                                                               (c // 2, c, 1, 1))]
            c //= 2
    return keys + _bn("features.norm5", c) + [("classifier.weight", (1000, c)), ("classifier.bias", (1000,))]


def original_layout(name):
    """[(key, shape)] of the published file, where the layout is written out here; else None."""
    if name == "alexnet":
        convs = [(0, (64, 3, 11, 11)), (3, (192, 64, 5, 5)), (6, (384, 192, 3, 3)), (8, (256, 384, 3, 3)),
                 (10, (256, 256, 3, 3))]
        fcs = [(1, (4096, 9216)), (4, (4096, 4096)), (6, (1000, 4096))]
        return ([kv for i, s in convs for kv in ((f"features.{i}.weight", s), (f"features.{i}.bias", s[:1]))]
                + [kv for i, s in fcs for kv in ((f"classifier.{i}.weight", s), (f"classifier.{i}.bias", s[:1]))])
    for table, keys in ((VGG_CONV_INDICES, _vgg_keys), (SQUEEZENET, _squeezenet_keys), (RESNETS, _resnet_keys),
                        (DENSENETS, _densenet_keys)):
        if name in table:
            return keys(name)
    return None


def old_densenet_key(key):
    """Today's ``denselayer3.norm1.weight`` as the 2017 files spell it: ``denselayer3.norm.1.weight``
    (other keys unchanged)."""
    return _DENSE_LAYER_MODULE.sub(r"\1\2.\3.", key)


_DENSE_LAYER_MODULE = re.compile(r"(\.denselayer\d+\.)(norm|relu|conv)([12])\.")


def model_state(name):
    """The model's state dict without num_batches_tracked (which pre-0.4 files lack)."""
    with torch.device("meta"):
        model = zoo.get_factory(name)()
    return OrderedDict((k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked"))


def test_the_zoo_is_the_2017_torchvision_list():
    assert set(zoo.ZOO_2017) == set(ORIGINAL_FILES)
    assert zoo.input_shape("inception_v3") == (1, 3, 299, 299)
    for name in zoo.ZOO_2017:
        if name != "inception_v3":
            assert zoo.input_shape(name) == (1, 3, 224, 224), name


@pytest.mark.parametrize("name", sorted(ORIGINAL_FILES))
def test_state_dict_matches_the_published_file(name):
    state = model_state(name)
    file_name, count = ORIGINAL_FILES[name]
    old = OrderedDict((old_densenet_key(k), tuple(v.shape)) for k, v in state.items())
    assert len(old) == count, f"{file_name}: {count} tensors, the model has {len(old)}"
    for key, shape in SHAPES.get(name, {}).items():
        assert old.get(key) == shape, (file_name, key, old.get(key), shape)
    layout = original_layout(name)
    if layout is not None:
        assert len(layout) == count
        assert sorted(old.items()) == sorted(layout), file_name


def test_inception_v3_state_dict_has_the_aux_head_and_the_google_module_names():
    state = model_state("inception_v3")
    tops = list(OrderedDict.fromkeys(k.split(".")[0] for k in state))
    assert tops == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                    "Mixed_6e", "AuxLogits", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"]
    assert sum(k.startswith("AuxLogits.") for k in state) == 2 * 5 + 2
    with torch.device("meta"):
        model = zoo.inception_v3()
        assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.001}
        assert {k for k in model.state_dict() if k.startswith("AuxLogits.")} == (
            set(model.state_dict()) - set(zoo.inception_v3(aux_logits=False).state_dict()))


def test_inception_v3_aux_head_runs_only_in_training():
    model = zoo.build("inception_v3", seed=0)
    x = zoo.example_input("inception_v3", batch=2, seed=1)
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
        model.train()
        logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 1000)


# ---- a 2017-layout file, legacy pickle format: loads strictly and converts ----------------
FAMILIES = {"alexnet": "alexnet", "vgg": "vgg11_bn", "resnet": "resnet50", "squeezenet": "squeezenet1_0",
            "densenet": "densenet121", "inception": "inception_v3"}


def write_2017_file(name, path, seed):
    """The seeded model's weights as torch 0.2 saved them: legacy pickle, ``_rebuild_tensor``,
    no ``num_batches_tracked``, DenseNet's ``norm.1`` names; returns the weights."""
    model = zoo.build(name, seed=seed)
    state = OrderedDict((old_densenet_key(k), v) for k, v in model.state_dict().items()
                        if not k.endswith("num_batches_tracked"))
    assert len(state) == ORIGINAL_FILES[name][1]
    path.write_bytes(legacy_bytes(state, rebuild="v1"))
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_2017_weights_file_loads_strictly_and_converts(family, tmp_path, capsys):
    name = FAMILIES[family]
    path = tmp_path / f"{name}-2017.pth"
    source = write_2017_file(name, path, seed=1)
    assert path.read_bytes()[:12] == legacy_bytes({})[:12]  # the legacy magic number

    state, _ = find_state_dict(tracecap.load_checkpoint(path))
    target = zoo.get_factory(name)()
    fixed, report = tracecap.fix_state_dict(state, target)
    assert report.ok, str(report)
    target.load_state_dict(fixed, strict=True)
    bns = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in target.modules())
    assert len(report.added) == bns  # num_batches_tracked, which 0.2 did not have
    if family == "densenet":
        assert len(report.renamed) == 58 * 10 and "norm.1" in str(report)
    else:
        assert not report.renamed
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key
    del target, fixed, state

    out = tmp_path / "out"
    rc = cli.main(["convert", name, "--weights", str(path), "--dialect", "opencv", "--verify", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"weights: {len(source.state_dict())} tensors from {path}" in err
    summary = json.loads((out / f"{name}.json").read_text())
    assert set(summary["verify"]) == set(runtimes.available())
    if os.environ.get("TRACECAP_REQUIRE_CAFFE") == "1":
        assert "caffe" in summary["verify"]
    assert all(v["ok"] for v in summary["verify"].values()), summary["verify"]
    # the Caffe files carry the file's weights: they reproduce the seed-1 model, not the
    # seed-0 model `tracecap convert NAME` builds before loading
    x = zoo.example_input(name, seed=0)
    (got,) = runtimes.run(out / f"{name}.prototxt", out / f"{name}.caffemodel",
                          {next(iter(summary["inputs"])): x.numpy()},
                          blobs=summary["outputs"]).values()
    with torch.no_grad():
        diff, scale = max_diff(got, source(x))
        assert diff <= 1e-4 * scale
        assert max_diff(got, zoo.build(name, seed=0)(x))[0] > 100 * diff
