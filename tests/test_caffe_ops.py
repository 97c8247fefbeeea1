"""Per-op conversion, verified on a real runtime: max abs diff <= 1e-5 x max(1, max|ref|).

Every case is captured, written in both dialects (which must differ only where
the dialects do), run on the `runtime` fixture (OpenCV, and Caffe when built)
and compared with eager PyTorch.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tracecap
from tracecap.mappers import caffe

from conversion import capture
from op_cases import case, run_case

torch.manual_seed(0)


def _x(*shape):
    return torch.randn(*shape)


def _seq(*layers):
    m = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
                if mod.affine:
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.5, 0.5)
            if isinstance(mod, nn.PReLU):
                mod.weight.uniform_(0.05, 0.5)
    return m


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


X = _x(2, 8, 12, 12)
X_ODD = _x(1, 4, 13, 11)

# (id, model, inputs, Caffe layer types expected in the opencv prototxt)
CASES = [
    ("conv_int_stride_pad", _seq(nn.Conv2d(8, 6, 3, stride=2, padding=1)), (X,), {"Convolution"}),
    ("conv_pair_nobias", _seq(nn.Conv2d(8, 6, (3, 5), stride=(1, 2), padding=(1, 2), bias=False)), (X,),
     {"Convolution"}),
    ("conv_depthwise", _seq(nn.Conv2d(8, 8, 3, padding=1, groups=8)), (X,), {"Convolution"}),
    ("conv_grouped_dilated", _seq(nn.Conv2d(8, 4, 3, padding=2, dilation=2, groups=2)), (X,), {"Convolution"}),
    ("zeropad_folded_into_conv", _seq(nn.ZeroPad2d((2, 2, 1, 1)), nn.Conv2d(8, 4, 3, padding=1)), (X,),
     {"Convolution"}),
    ("deconv", _seq(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)), (X,), {"Deconvolution"}),
    ("deconv_output_padding", _seq(nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)), (X,),
     {"Deconvolution", "Slice", "Silence"}),
    ("deconv_output_padding_rect", _seq(nn.ConvTranspose2d(8, 4, (3, 4), stride=(2, 3), padding=(1, 2),
                                                          output_padding=(1, 0))), (X,), {"Deconvolution", "Slice"}),
    ("deconv_grouped", _seq(nn.ConvTranspose2d(8, 4, 3, stride=1, padding=1, groups=2, bias=False)), (X,),
     {"Deconvolution"}),
    ("linear_after_flatten", _seq(nn.Flatten(), nn.Linear(8 * 144, 7)), (X,), {"Flatten", "InnerProduct"}),
    ("linear_after_view", Lambda(lambda x, fc=nn.Linear(8 * 144, 5): fc(x.view(x.size(0), -1))), (X,),
     {"InnerProduct"}),
    ("linear_2d_nobias", _seq(nn.Linear(16, 5, bias=False)), (_x(3, 16),), {"InnerProduct"}),
    ("mm_constant", Lambda(lambda x, w=torch.randn(16, 6): torch.mm(x, w)), (_x(3, 16),), {"InnerProduct"}),
    ("matmul_constant_3d", Lambda(lambda x, w=torch.randn(12, 5): x.view(2, 8, 144)[:, :, :12] @ w), (X,),
     {"InnerProduct"}),
    ("batchnorm2d_affine", _seq(nn.BatchNorm2d(8, eps=1e-3)), (X,), {"BatchNorm", "Scale"}),
    ("batchnorm2d_plain", _seq(nn.BatchNorm2d(8, affine=False)), (X,), {"BatchNorm"}),
    ("batchnorm1d", _seq(nn.Linear(16, 6), nn.BatchNorm1d(6)), (_x(4, 16),), {"BatchNorm", "Scale"}),
    ("relu", _seq(nn.ReLU()), (X,), {"ReLU"}),
    ("relu_inplace_after_conv", _seq(nn.Conv2d(8, 8, 1), nn.ReLU(inplace=True)), (X,), {"ReLU"}),
    ("leaky_relu", _seq(nn.LeakyReLU(0.1)), (X,), {"ReLU"}),
    ("prelu_shared", _seq(nn.PReLU()), (X,), {"PReLU"}),
    ("prelu_channel", _seq(nn.PReLU(8)), (X,), {"PReLU"}),
    ("relu6", _seq(nn.ReLU6()), (X * 4,), {"ReLU6"}),
    ("hardtanh_0_6", _seq(nn.Hardtanh(0.0, 6.0)), (X * 4,), {"ReLU6"}),
    ("hardtanh_default", _seq(nn.Hardtanh()), (X * 2,), {"Power", "ReLU6"}),
    ("clamp_min_only", Lambda(lambda x: x.clamp(min=-0.5)), (X,), {"Power", "ReLU"}),
    ("clamp_max_only", Lambda(lambda x: torch.clamp(x, max=0.25)), (X,), {"Power", "ReLU"}),
    ("clamp_0_inf", Lambda(lambda x: x.clamp(0)), (X,), {"ReLU"}),
    ("hardsigmoid", _seq(nn.Hardsigmoid()), (X * 4,), {"Power", "ReLU6"}),
    ("sigmoid", _seq(nn.Sigmoid()), (X,), {"Sigmoid"}),
    ("tanh", _seq(nn.Tanh()), (X,), {"TanH"}),
    ("elu", _seq(nn.ELU(0.7)), (X,), {"ELU"}),
    ("silu", _seq(nn.SiLU()), (X,), {"Sigmoid", "Eltwise"}),
    ("softmax_dim1", _seq(nn.Softmax(dim=1)), (X,), {"Softmax"}),
    ("softmax_last", Lambda(lambda x: F.softmax(x, dim=-1)), (X,), {"Softmax"}),
    ("softmax_2d", Lambda(lambda x: F.softmax(x, 1)), (_x(3, 10),), {"Softmax"}),
    ("log_softmax", Lambda(lambda x: F.log_softmax(x, 1)), (_x(3, 10),), {"Softmax", "Log"}),
    ("maxpool_floor", _seq(nn.MaxPool2d(3, 2)), (X_ODD,), {"Pooling"}),
    ("maxpool_ceil", _seq(nn.MaxPool2d(3, 2, ceil_mode=True)), (X_ODD,), {"Pooling"}),
    ("maxpool_pad", _seq(nn.MaxPool2d(3, 2, padding=1)), (X,), {"Pooling"}),
    ("avgpool_floor", _seq(nn.AvgPool2d(2)), (X_ODD,), {"Pooling"}),
    ("avgpool_ceil", _seq(nn.AvgPool2d(3, 2, ceil_mode=True)), (X_ODD,), {"Pooling"}),
    ("avgpool_pad_include", _seq(nn.AvgPool2d(3, 1, padding=1)), (X,), {"Pooling"}),
    ("avgpool_rect", _seq(nn.AvgPool2d((2, 3), (2, 3))), (X,), {"Pooling"}),
    ("adaptive_global", _seq(nn.AdaptiveAvgPool2d(1)), (X,), {"Pooling"}),
    ("adaptive_divisible", _seq(nn.AdaptiveAvgPool2d((3, 4))), (X,), {"Pooling"}),
    ("adaptive_max_global", _seq(nn.AdaptiveMaxPool2d(1)), (X,), {"Pooling"}),
    ("dropout_removed", _seq(nn.Dropout(0.5), nn.Conv2d(8, 2, 1), nn.Dropout2d(0.3)), (X,), {"Convolution"}),
    ("concat_channels", Lambda(lambda x: torch.cat([x, x * 2], 1)), (X,), {"Concat"}),
    ("concat_height", Lambda(lambda x: torch.cat([x, torch.sigmoid(x)], 2)), (X,), {"Concat"}),
    ("concat_last", Lambda(lambda x: torch.cat([x, x.tanh(), x], -1)), (X,), {"Concat"}),
    ("eltwise_sum", Lambda(lambda x: x.sigmoid() + x.tanh()), (X,), {"Eltwise"}),
    ("eltwise_prod", Lambda(lambda x: x.sigmoid() * x.tanh()), (X,), {"Eltwise"}),
    ("eltwise_max", Lambda(lambda x: torch.maximum(x.sigmoid(), x.tanh())), (X,), {"Eltwise"}),
    ("sub_tensors", Lambda(lambda x: x.sigmoid() - x.tanh()), (X,), {"Eltwise"}),
    ("add_alpha", Lambda(lambda x: torch.add(x, x.tanh(), alpha=0.5)), (X,), {"Eltwise"}),
    ("two_inputs", Lambda(lambda a, b: a * b + a), (X, _x(2, 8, 12, 12)), {"Eltwise"}),
    ("scalar_mul_add", Lambda(lambda x: x * 0.5 + 3), (X,), {"Power"}),
    ("scalar_sub_rsub", Lambda(lambda x: 1 - (x - 2)), (X,), {"Power"}),
    ("scalar_div_rdiv", Lambda(lambda x: x / 4 + 2 / (x.sigmoid() + 1)), (X,),
     {"Power"}),
    ("tensor_div", Lambda(lambda x: x / (x.sigmoid() + 1)), (X,), {"Power", "Eltwise"}),
    ("broadcast_mul_se", Lambda(lambda x: x * torch.sigmoid(x.mean((2, 3), keepdim=True))), (X,), {"Scale"}),
    ("broadcast_mul_view", Lambda(lambda x: x * F.adaptive_avg_pool2d(x, 1).view(2, 8, 1, 1).sigmoid()), (X,),
     {"Scale"}),
    ("broadcast_add", Lambda(lambda x: x + F.adaptive_avg_pool2d(x, 1)), (X,), {"Deconvolution", "Eltwise"}),
    ("broadcast_add_flat", Lambda(lambda x: x.mean((2, 3)).view(2, 8, 1, 1) + x), (X,), {"Deconvolution"}),
    ("const_channel_scale_bias", Lambda(lambda x, w=torch.rand(1, 8, 1, 1) + 0.5, b=torch.randn(8, 1, 1):
                                        x * w + b), (X,), {"Scale"}),
    ("flatten", _seq(nn.Flatten()), (X,), {"Flatten"}),
    ("view_reshape", Lambda(lambda x: x.view(2, 8, 144).reshape(2, 4, 2, 144) * 1.5), (X,), {"Reshape"}),
    ("squeeze_unsqueeze", Lambda(lambda x: x.mean(3).unsqueeze(2) * 2), (X,), {"Reshape"}),
    ("permute", Lambda(lambda x: x.permute(0, 2, 3, 1) * 1.5), (X,), {"Permute"}),
    ("transpose", Lambda(lambda x: x.transpose(1, 3) + 1), (X,), {"Permute"}),
    ("channel_shuffle", Lambda(lambda x: x.view(2, 2, 4, 12, 12).transpose(1, 2).contiguous().view(2, 8, 12, 12)
                               * 1.0 + 0), (X,), {"Reshape", "Permute"}),
    ("getitem_channels", Lambda(lambda x: x[:, 2:5] * 2), (X,), {"Slice"}),
    ("getitem_multi_axis", Lambda(lambda x: x[:, 1:, 2:-2, :6] + 1), (X,), {"Slice"}),
    ("getitem_int", Lambda(lambda x: x[:, 3] * 2), (X,), {"Slice", "Reshape"}),
    ("chunk", Lambda(lambda x: [t.sigmoid() for t in x.chunk(2, 1)]), (X,), {"Slice"}),
    ("split_sizes", Lambda(lambda x: [t * 2 for t in torch.split(x, [2, 6], 1)]), (X,), {"Slice"}),
    ("mean_hw", Lambda(lambda x: x.mean(3).mean(2)), (X,), {"Pooling"}),
    ("mean_keepdim", Lambda(lambda x: x.mean((2, 3), keepdim=True) + 1), (X,), {"Pooling"}),
    ("upsample_nearest", Lambda(lambda x: F.interpolate(x, scale_factor=2, mode="nearest")), (X,),
     {"Deconvolution"}),
    ("pixel_shuffle", _seq(nn.PixelShuffle(2)), (X,), {"Reshape", "Permute"}),
]


@pytest.mark.parametrize("c", [case(*c) for c in CASES], ids=[c[0] for c in CASES])
def test_op_on_runtime(c, runtime, tmp_path):
    run_case(c, runtime, tmp_path)


# ---- what cannot be converted is refused, all at once, with locations ---------------------------------
class Unconvertible(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=0, output_padding=1)

    def forward(self, x):
        y = self.up(x)
        y = torch.erf(y)                                         # no Caffe layer
        return F.pad(y, (0, 0, 0, 0, 0, 0, 1, 0))                # pads the batch axis: no Caffe construction


def test_unsupported_ops_are_all_reported_with_locations(tmp_path):
    graph, _ = capture(Unconvertible().eval(), _x(1, 4, 5, 5))
    with pytest.raises(tracecap.UnsupportedOpError) as info:
        caffe.save(graph, tmp_path / "n.prototxt", tmp_path / "n.caffemodel")
    msg = str(info.value)
    assert "3 op(s) cannot be converted" in msg
    assert "op `conv_transpose2d` (node up) in module `up` (ConvTranspose2d)" in msg and "output_padding" in msg
    assert "no Caffe mapping for `erf`" in msg and "the batch axis cannot" in msg
    assert msg.count("test_caffe_ops.py:") == 3
    assert len(info.value.problems) == 3
    assert not list(tmp_path.iterdir()), "nothing may be written when conversion fails"


def test_zero_pad_folds_into_the_convolution():
    graph, _ = capture(_seq(nn.ZeroPad2d((2, 2, 1, 1)), nn.Conv2d(8, 4, 3, padding=1)), X)
    net = caffe.to_net(graph, "opencv")
    assert [l.type for l in net.layer] == ["Input", "Convolution"]
    conv = net.layer[1].convolution_param
    assert (conv.pad_h, conv.pad_w) == (2, 3) and net.layer[1].bottom == [graph.inputs[0].name]


def test_matmul_of_two_activations_is_refused():
    graph, _ = capture(Lambda(lambda x: torch.matmul(x, x.transpose(2, 3))), X)
    with pytest.raises(tracecap.UnsupportedOpError, match="matmul of two activations"):
        caffe.to_net(graph, "opencv")


def test_pad_that_cannot_fold_is_refused():
    graph, _ = capture(Lambda(lambda x: F.pad(x, (0, 0, 0, 0, 0, 0, 1, 0)).sigmoid()), X)
    with pytest.raises(tracecap.UnsupportedOpError, match=r"constant pad of axis 0 of a 4-D tensor"):
        caffe.to_net(graph, "opencv")


def test_pooling_shape_mismatch_is_resolved_by_rounding_mode(tmp_path):
    """PyTorch floors, Caffe ceils by default: the written pooling must reproduce PyTorch's size."""
    graph, _ = capture(_seq(nn.MaxPool2d(3, 2, padding=1)), _x(1, 2, 112, 112))
    net = caffe.to_net(graph, "opencv")
    pool = [l for l in net.layer if l.type == "Pooling"][0]
    assert pool.pooling_param.ceil_mode is False
    bvlc = caffe.to_net(graph, "bvlc")
    pool = [l for l in bvlc.layer if l.type == "Pooling"][0]
    assert pool.pooling_param.round_mode == pool.pooling_param.FLOOR


def test_unknown_dialect():
    graph, _ = capture(_seq(nn.ReLU()), X)
    with pytest.raises(tracecap.MappingError, match="unknown Caffe dialect 'caffe2'"):
        caffe.to_net(graph, "caffe2")


def test_output_is_deterministic(tmp_path):
    model = _seq(nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    for k in range(2):
        graph, _ = capture(model, X)
        caffe.save(graph, tmp_path / f"{k}.prototxt", tmp_path / f"{k}.caffemodel", dialect="opencv")
    assert (tmp_path / "0.prototxt").read_bytes() == (tmp_path / "1.prototxt").read_bytes()
    assert (tmp_path / "0.caffemodel").read_bytes() == (tmp_path / "1.caffemodel").read_bytes()
