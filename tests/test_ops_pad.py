"""Padding of every kind, converted and run on both real runtimes against eager PyTorch.

Constant pads are one Convolution (one-hot kernel: asymmetric borders, channel pads), crops are
Slices, a non-zero value adds a border map (Scale); reflect/replicate/circular are Slice + Concat.
Shapes: odd sizes, batch > 1, channels other than 3, pads up to size - 1, 3-D and 5-D inputs.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conversion import capture
from op_cases import Refusal, case, ids, run_case, run_refusal
from tracecap.mappers import caffe

torch.manual_seed(0)
X = torch.randn(2, 3, 7, 9)        # odd sizes, batch 2
X4 = torch.randn(1, 5, 6, 6)
X8 = torch.randn(2, 4, 8, 8)
X16 = torch.randn(2, 16, 5, 5)     # CIFAR-ResNet shortcut width
L3 = torch.randn(2, 6, 11)         # N x C x L
V5 = torch.randn(1, 2, 3, 4, 5)    # N x C x D x H x W
ROW = torch.randn(2, 3, 1, 6)      # a single row


def _net(*layers):
    return nn.Sequential(*layers).eval()


class PadReadTwice(nn.Module):
    """A symmetric zero pad that a convolution and another op read: it cannot fold into the convolution."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = F.pad(x, (1, 1, 1, 1))
        return self.conv(y) + y[:, :, 1:-1, 1:-1].relu()


CASES = [
    # constant zero, asymmetric / not absorbed by a convolution
    case("zero_asym_0101", lambda x: F.pad(x, (0, 1, 0, 1)), (X,), {"Convolution"}),
    case("zero_asym_2013", lambda x: F.pad(x, (2, 0, 1, 3)), (X,), {"Convolution"}),
    case("zeropad2d_module", _net(nn.ZeroPad2d((1, 2, 3, 0))), (X4,), {"Convolution"}),
    case("zero_symmetric_not_before_conv", lambda x: F.pad(x, (2, 2, 2, 2)).sigmoid(), (X8,), {"Convolution"}),
    case("zero_pad_read_by_conv_and_relu", PadReadTwice().eval(), (X8,), {"Convolution"}),
    case("zero_large_asym", lambda x: F.pad(x, (5, 0, 0, 4)), (X4,), {"Convolution"}),
    # negative amounts crop
    case("crop_negative", lambda x: F.pad(x, (-1, -2, 0, -1)), (X,), {"Slice"}),
    case("crop_and_pad_mixed", lambda x: F.pad(x, (-1, 2, 1, -2)), (X,), {"Slice", "Convolution"}),
    case("crop_channels", lambda x: F.pad(x, (0, 0, 0, 0, -1, 0)), (X4,), {"Slice"}),
    # channel pads (residual shortcuts, option A)
    case("channel_pad_shortcut", lambda x: F.pad(x, (0, 0, 0, 0, 8, 8)), (X16,), {"Convolution"}),
    case("channel_pad_one_side", lambda x: F.pad(x, (0, 0, 0, 0, 0, 3)), (X,), {"Convolution"}),
    case("channel_and_spatial_pad", lambda x: F.pad(x, (1, 1, 0, 2, 1, 2)), (X,), {"Convolution"}),
    # non-zero constants
    case("constant_value", lambda x: F.pad(x, (1, 2, 0, 1), value=1.5), (X,), {"Convolution", "Scale"}),
    case("constantpad2d_module", _net(nn.ConstantPad2d(2, -0.5)), (X4,), {"Scale"}),
    case("constant_channels_value", lambda x: F.pad(x, (0, 0, 0, 0, 1, 1), value=-2.0), (X,), {"Scale"}),
    case("constant_pad_before_conv", _net(nn.ConstantPad2d((1, 0, 1, 0), 3.0), nn.Conv2d(4, 6, 2)), (X8,),
         {"Scale", "Convolution"}),
    # 3-D and 5-D inputs
    case("zero_pad_1d", lambda x: F.pad(x, (1, 2)), (L3,), {"Convolution", "Reshape"}),
    case("constantpad1d_module", _net(nn.ConstantPad1d((2, 0), 3.0)), (L3,), {"Scale"}),
    case("pad_1d_channels_and_length", lambda x: F.pad(x, (0, 3, 2, 1)), (L3,), {"Convolution"}),
    case("zero_pad_3d_volume", lambda x: F.pad(x, (1, 1, 0, 2, 1, 0)), (V5,), {"Convolution"}),
    # reflect
    case("reflectionpad2d_1", _net(nn.ReflectionPad2d(1)), (X8,), {"Slice", "Concat"}),
    case("reflectionpad2d_3_then_conv7", _net(nn.ReflectionPad2d(3), nn.Conv2d(4, 3, 7)), (X8,), {"Concat"}),
    case("reflect_asym", lambda x: F.pad(x, (3, 1, 0, 6), mode="reflect"), (X,), {"Concat"}),
    case("reflect_size_minus_1", lambda x: F.pad(x, (8, 8, 6, 6), mode="reflect"), (X,), {"Concat"}),
    case("reflectionpad1d", _net(nn.ReflectionPad1d((3, 2))), (L3,), {"Concat"}),
    # replicate
    case("replicationpad2d", _net(nn.ReplicationPad2d((1, 3, 2, 0))), (X,), {"Concat"}),
    case("replicate_wide", lambda x: F.pad(x, (5, 5, 5, 5), mode="replicate"), (torch.randn(1, 2, 3, 3),), {"Concat"}),
    case("replicate_single_row", lambda x: F.pad(x, (1, 1, 2, 2), mode="replicate"), (ROW,), {"Concat"}),
    case("replicationpad1d", _net(nn.ReplicationPad1d(4)), (L3,), {"Concat"}),
    # circular
    case("circular", lambda x: F.pad(x, (2, 1, 1, 3), mode="circular"), (X,), {"Concat"}),
    case("circular_full_width", lambda x: F.pad(x, (9, 0, 0, 0), mode="circular"), (X,), {"Concat"}),
    case("circular_1d", lambda x: F.pad(x, (4, 3), mode="circular"), (L3,), {"Concat"}),
    case("circular_crop_then_wrap", lambda x: F.pad(x, (2, -1, -2, 1), mode="circular"), (X,), {"Concat"}),
    case("reflect_crop_other_side", lambda x: F.pad(x, (-2, 3, 1, -1), mode="reflect"), (X,), {"Concat"}),
]


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_pad_on_runtime(c, runtime, tmp_path):
    run_case(c, runtime, tmp_path)


REFUSALS = [
    Refusal("constant_pad_batch_axis", lambda x: F.pad(x, (0, 0, 0, 0, 0, 0, 1, 0)), (X,),
            r"constant pad of axis 0 of a 4-D tensor.*batch axis cannot"),
    Refusal("constant_crop_to_nothing", lambda x: F.pad(x, (0, 0, -1, 1)), (ROW,), r"crops axis 2 of size 1 to nothing"),
    Refusal("constant_pad_5d_channels", lambda x: F.pad(x, (0, 0, 0, 0, 0, 0, 1, 1)), (V5,),
            r"constant pad of axis 1 of a 5-D tensor"),
]


@pytest.mark.parametrize("r", REFUSALS, ids=ids(REFUSALS))
def test_pad_refused(r):
    run_refusal(r)


def test_lean_constructions():
    """Layer counts of the common pads: asymmetric zero pad 1, reflect/replicate 2 per axis, symmetric
    zero pad before a convolution still folded into it (0)."""
    def types(fn, x):
        graph, _ = capture(fn, x)
        return [l.type for l in caffe.to_net(graph, "opencv").layer[1:]]
    assert types(lambda x: F.pad(x, (0, 1, 0, 1)), X) == ["Convolution"]
    assert types(lambda x: F.pad(x, (0, 0, 0, 0, 8, 8)), X16) == ["Convolution"]
    assert types(nn.ReflectionPad2d(2), X8) == ["Slice", "Concat", "Slice", "Concat"]
    assert types(nn.ReplicationPad2d(1), X8) == ["Slice", "Concat", "Slice", "Concat"]
    assert types(_net(nn.ZeroPad2d(1), nn.Conv2d(4, 2, 3)), X8) == ["Convolution"]
