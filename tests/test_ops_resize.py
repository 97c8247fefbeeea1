"""Resizing (``interpolate`` and every old spelling of it), converted and run on both real runtimes.

Each mode is one constant matrix per spatial axis (torch's own weights), written as an InnerProduct
along the last axis and a 1x1 Convolution along the others (or one joint InnerProduct for small
planes); nearest by integer factors stays a Deconvolution. Up and down, integer and fractional factors,
``size=``, ``align_corners`` both ways, ``recompute_scale_factor`` both ways, odd sizes, batch > 1.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conversion import capture
from op_cases import case, ids, run_case
from tracecap.mappers import caffe

torch.manual_seed(0)
X = torch.randn(2, 3, 7, 9)          # odd sizes, batch 2
X5 = torch.randn(1, 5, 6, 10)
BIG = torch.randn(1, 2, 14, 18)      # large enough for the per-axis (not joint) construction
L3 = torch.randn(2, 4, 11)           # N x C x L
V5 = torch.randn(1, 2, 3, 4, 5)      # N x C x D x H x W


def _net(*layers):
    return nn.Sequential(*layers).eval()


def up(**kw):
    return lambda x: F.interpolate(x, **kw)


CASES = [
    # bilinear, align_corners=False (today's default)
    case("bilinear_x2", up(scale_factor=2, mode="bilinear"), (X,), {"InnerProduct"}),
    case("bilinear_x1_5", up(scale_factor=1.5, mode="bilinear"), (X,), {"InnerProduct"}),
    case("bilinear_x1_7_recompute", up(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True), (X,)),
    case("bilinear_x1_7_no_recompute", up(scale_factor=1.7, mode="bilinear", recompute_scale_factor=False), (X,)),
    case("bilinear_x0_5_down", up(scale_factor=0.5, mode="bilinear"), (X5,)),
    case("bilinear_size_up", up(size=(20, 31), mode="bilinear"), (X,)),
    case("bilinear_size_down", up(size=(4, 5), mode="bilinear"), (X,)),
    case("bilinear_factor_pair", up(scale_factor=(2, 3), mode="bilinear"), (X5,)),
    case("bilinear_one_axis_only", up(size=(7, 13), mode="bilinear"), (X,)),
    case("bilinear_large_per_axis", up(scale_factor=4, mode="bilinear"), (BIG,), {"InnerProduct", "Convolution"}),
    # bilinear, align_corners=True (the pre-0.4 behaviour)
    case("bilinear_ac_x2", up(scale_factor=2, mode="bilinear", align_corners=True), (X,)),
    case("bilinear_ac_size", up(size=(13, 17), mode="bilinear", align_corners=True), (X,)),
    case("bilinear_ac_down", up(size=(3, 4), mode="bilinear", align_corners=True), (X,)),
    case("bilinear_ac_large", up(size=(40, 50), mode="bilinear", align_corners=True), (BIG,)),
    # module and old functional spellings
    case("nn_upsample_bilinear", _net(nn.Upsample(scale_factor=2, mode="bilinear")), (X5,)),
    case("nn_upsamplingbilinear2d", _net(nn.UpsamplingBilinear2d(scale_factor=2)), (X,)),
    case("f_upsample_bilinear_size", lambda x: F.upsample_bilinear(x, size=(10, 12)), (X,)),
    case("f_upsample_old_bilinear", lambda x: F.upsample(x, scale_factor=3, mode="bilinear"), (X5,)),
    case("nn_upsamplingnearest2d_size", _net(nn.UpsamplingNearest2d(size=(10, 13))), (X,)),
    case("f_upsample_nearest", lambda x: F.upsample_nearest(x, scale_factor=3), (X5,), {"Deconvolution"}),
    # nearest
    case("nearest_x2_deconv", up(scale_factor=2), (X,), {"Deconvolution"}),
    case("nearest_x3_x2_deconv", up(scale_factor=(3, 2)), (X5,), {"Deconvolution"}),
    case("nearest_x1_5", up(scale_factor=1.5), (X,)),
    case("nearest_x1_7_recompute", up(scale_factor=1.7, recompute_scale_factor=True), (X,)),
    case("nearest_size", up(size=(10, 4)), (X,)),
    case("nearest_down_x0_5", up(scale_factor=0.5), (X,)),
    case("nearest_size_large", up(size=(31, 41)), (BIG,)),
    case("nearest_exact_x1_5", up(scale_factor=1.5, mode="nearest-exact"), (X,)),
    case("nearest_exact_size_down", up(size=(5, 4), mode="nearest-exact"), (X,)),
    # other modes
    case("bicubic_x2", up(scale_factor=2, mode="bicubic"), (X,)),
    case("bicubic_ac_size", up(size=(11, 6), mode="bicubic", align_corners=True), (X,)),
    case("bilinear_antialias_down", up(size=(3, 4), mode="bilinear", antialias=True), (X,)),
    case("area_size", up(size=(3, 4), mode="area"), (X,)),
    case("identity_size", up(size=(7, 9), mode="bilinear"), (X,), {"Reshape"}),
    # 3-D (linear) and 5-D (trilinear, nearest)
    case("linear_1d_x2_5", up(scale_factor=2.5, mode="linear"), (L3,)),
    case("linear_1d_ac_size", up(size=7, mode="linear", align_corners=True), (L3,)),
    case("nearest_1d_size", up(size=17), (L3,)),
    case("trilinear", up(scale_factor=(2, 1.5, 0.6), mode="trilinear"), (V5,)),
    case("nearest_3d", up(size=(5, 3, 7)), (V5,)),
]


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_resize_on_runtime(c, runtime, tmp_path):
    run_case(c, runtime, tmp_path)


def _types(fn, x):
    graph, _ = capture(fn, x)
    return [l.type for l in caffe.to_net(graph, "opencv").layer[1:]]


def test_lean_constructions():
    """Small planes: one joint InnerProduct + Reshape; large: InnerProduct along W, then Reshape +
    1x1 Convolution + Reshape along H; integer nearest: one Deconvolution."""
    assert _types(up(scale_factor=2, mode="bilinear"), X) == ["InnerProduct", "Reshape"]
    assert _types(up(scale_factor=4, mode="bilinear"), BIG) == ["InnerProduct", "Reshape", "Convolution", "Reshape"]
    assert _types(up(scale_factor=2), X) == ["Deconvolution"]
    assert _types(up(scale_factor=2.5, mode="linear"), L3) == ["InnerProduct"]
