"""Pooling beyond plain windows, converted and run on both real runtimes against eager PyTorch.

AvgPool with ``count_include_pad=False`` or ``divisor_override`` (AVE Pooling + a Scale map of divisor
ratios, ceil-mode borders included), adaptive pooling to sizes that do not divide the input (pyramid
pooling), ``max_pool2d(return_indices=True)`` and ``max_unpool2d`` (SegNet-style decoders, ties included).
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conversion import capture
from op_cases import Refusal, case, ids, run_case, run_refusal
from tracecap.mappers import caffe

torch.manual_seed(0)
X = torch.randn(2, 3, 7, 9)          # odd sizes, batch 2
X8 = torch.randn(2, 4, 8, 10)
X13 = torch.randn(1, 6, 13, 13)
BIG = torch.randn(1, 2, 60, 60)      # large enough for the per-axis (not joint) construction
TIES = torch.randint(0, 3, (2, 3, 8, 10)).float()  # many equal maxima in a window


def _net(*layers):
    return nn.Sequential(*layers).eval()


class Pyramid(nn.Module):
    """PSPNet-style pyramid pooling: adaptive average pools, 1x1 convs, bilinear back, concat."""
    def __init__(self, c=4, sizes=(1, 2, 3, 6)):
        super().__init__()
        self.sizes = sizes
        self.convs = nn.ModuleList([nn.Conv2d(c, 2, 1) for _ in sizes])

    def forward(self, x):
        h, w = x.shape[2:]
        parts = [x] + [F.interpolate(conv(F.adaptive_avg_pool2d(x, s)), size=(h, w), mode="bilinear",
                                     align_corners=False) for s, conv in zip(self.sizes, self.convs)]
        return torch.cat(parts, 1)


class SegNetStage(nn.Module):
    """Encoder conv + pool with indices, decoder conv + unpool with those indices + conv."""
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.dec = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        y, idx = self.pool(F.relu(self.enc(x)))
        return self.dec(self.unpool(F.relu(self.mid(y)), idx, output_size=x.shape[2:]))


def unpool(k, s=None, p=0, ceil=False, out=None):
    def fn(x):
        v, i = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
        return F.max_unpool2d(v, i, k, s, p, output_size=x.shape[2:] if out is None else out)
    return fn


CASES = [
    # average pooling: padding not counted, divisor overridden
    case("avg_exclude_pad", lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), (X,), {"Pooling", "Scale"}),
    case("avg_exclude_pad_ceil", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (X,)),
    case("avg_exclude_pad_ceil_even", _net(nn.AvgPool2d(2, 2, 1, ceil_mode=True, count_include_pad=False)), (X8,)),
    case("avg_exclude_pad_rect", lambda x: F.avg_pool2d(x, (3, 2), (1, 2), (1, 1), ceil_mode=True,
                                                        count_include_pad=False), (X,)),
    case("avg_exclude_pad_stride1", _net(nn.AvgPool2d(3, 1, 1, count_include_pad=False)), (X13,)),
    case("avg_divisor_override_pad", lambda x: F.avg_pool2d(x, 3, 2, 1, divisor_override=4), (X,), {"Power"}),
    case("avg_divisor_override", _net(nn.AvgPool2d(2, divisor_override=3)), (X8,)),
    case("avg_divisor_override_ceil", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False,
                                                             divisor_override=5), (X,)),
    # adaptive average
    case("adaptive_avg_even_windows", lambda x: F.adaptive_avg_pool2d(x, (3, 4)), (X,), {"Pooling"}),
    case("adaptive_avg_uneven", lambda x: F.adaptive_avg_pool2d(x, 6), (X,), {"InnerProduct"}),
    case("adaptive_avg_uneven_rect", _net(nn.AdaptiveAvgPool2d((5, 7))), (X13,)),
    case("adaptive_avg_keep_height", _net(nn.AdaptiveAvgPool2d((None, 4))), (X,)),
    case("adaptive_avg_upsampling_windows", lambda x: F.adaptive_avg_pool2d(x, (10, 12)), (X,)),
    case("adaptive_avg_large_per_axis", lambda x: F.adaptive_avg_pool2d(x, 7), (BIG,), {"Convolution"}),
    case("pyramid_pooling", Pyramid().eval(), (X13[:, :4],), {"InnerProduct", "Concat"}),
    # adaptive max
    case("adaptive_max_even_windows", lambda x: F.adaptive_max_pool2d(x, (3, 4)), (X,), {"Pooling"}),
    case("adaptive_max_uneven", lambda x: F.adaptive_max_pool2d(x, (6, 5)), (X,), {"Pooling", "Eltwise"}),
    case("adaptive_max_uneven_square", _net(nn.AdaptiveMaxPool2d(6)), (X13,)),
    case("adaptive_max_upsampling_windows", lambda x: F.adaptive_max_pool2d(x, (10, 12)), (X,)),
    case("adaptive_max_one_axis", lambda x: F.adaptive_max_pool2d(x, (7, 4)), (X,)),
    case("adaptive_max_large_per_axis", lambda x: F.adaptive_max_pool2d(x, 7), (BIG,)),
    case("adaptive_max_ties", lambda x: F.adaptive_max_pool2d(x, (3, 6)), (TIES,)),
    case("adaptive_max_global_indices", lambda x: F.adaptive_max_pool2d(x, 1, return_indices=True), (X,)),
    # max pooling with indices
    case("max_pool_indices_values_only", lambda x: F.max_pool2d(x, 2, return_indices=True)[0].relu(), (X,)),
    case("max_pool_indices_out", lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True), (X,)),
    case("max_pool_indices_ceil_ties", lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True),
         (TIES,)),
    # unpooling
    case("unpool_2x2", unpool(2), (X8,), {"Pooling", "AbsVal", "Eltwise"}),
    case("unpool_modules", lambda x, pool=nn.MaxPool2d(2, return_indices=True), up=nn.MaxUnpool2d(2): up(*pool(x)),
         (X8,)),
    case("unpool_odd_output_size", unpool(2), (X,)),
    case("unpool_ties", unpool(2), (TIES,)),
    case("unpool_3x3_pad_ceil", unpool(3, 3, 1, ceil=True), (X,)),
    case("unpool_rect", unpool((2, 3)), (X,)),
    case("unpool_large_per_axis", unpool(2), (torch.randn(1, 2, 32, 40),), {"Convolution"}),
    case("segnet_stage", SegNetStage().eval(), (torch.randn(2, 3, 9, 12),)),
]


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_pool_on_runtime(c, runtime, tmp_path):
    run_case(c, runtime, tmp_path)


REFUSALS = [
    Refusal("unpool_overlapping_windows", unpool(3, 2), (X8,), r"overlapping or gapped windows"),
    Refusal("unpool_to_another_plane", unpool(2, out=(9, 11)), (X8,), r"another width"),
    Refusal("unpool_indices_from_input", lambda v, i: F.max_unpool2d(v, i, 2),
            (torch.randn(1, 2, 3, 4), torch.tensor([0, 1, 16, 17]).repeat(6).reshape(1, 2, 3, 4)),
            r"do not come from a max_pool2d"),
    Refusal("adaptive_max_uneven_indices", lambda x: F.adaptive_max_pool2d(x, (6, 5), return_indices=True), (X,),
            r"return_indices=True\) over uneven windows"),
    Refusal("max_pool_dilated_indices", lambda x: F.max_pool2d(x, 2, dilation=2, return_indices=True), (X8,),
            r"dilated max pooling"),
]


@pytest.mark.parametrize("r", REFUSALS, ids=ids(REFUSALS))
def test_pool_refused(r):
    run_refusal(r)


def _types(fn, x):
    graph, _ = capture(fn, x)
    return [l.type for l in caffe.to_net(graph, "opencv").layer[1:]]


def test_lean_constructions():
    """Layer counts: divisor fix 1 Scale; uneven adaptive avg = 1 matrix (2 layers on small planes);
    the indices of a max pooling are its second top (no extra layer)."""
    assert _types(lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), X) == ["Pooling", "Scale"]
    assert _types(lambda x: F.adaptive_avg_pool2d(x, 6), X) == ["InnerProduct", "Reshape"]
    assert _types(lambda x: F.max_pool2d(x, 2, return_indices=True), X8) == ["Pooling"]
    assert len(_types(unpool(2), X8)) == 8
