"""Normalization on both real runtimes: instance/group/layer norm, F.normalize, local response norm
(and the 2017 cross-map LRN written with pow + avg_pool3d + pow), each compared with eager PyTorch."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from canonical import check_reference_replay
from op_cases import Refusal, case, ids, run_case, run_refusal

torch.manual_seed(3)


def _x(*shape, scale=1.0, shift=0.0):
    return torch.randn(*shape) * scale + shift


def _affine(m):
    """Non-trivial affine parameters and running statistics, so that each one is checked."""
    m = m.eval()
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if name == "weight":
                t.uniform_(0.5, 1.5)
            elif name == "bias":
                t.uniform_(-0.5, 0.5)
            elif name == "running_mean":
                t.uniform_(-0.5, 0.5)
            elif name == "running_var":
                t.uniform_(0.5, 1.5)
    return m


class CrossMapLRN(nn.Module):
    """The cross-map LRN of 2017-era code (e.g. GoogLeNet/AlexNet ports), written out with avg_pool3d."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x):
        div = x.pow(2).unsqueeze(1)
        div = F.avg_pool3d(div, (self.size, 1, 1), stride=1, padding=(self.size // 2, 0, 0)).squeeze(1)
        div = div.mul(self.alpha).add(1.0).pow(self.beta)
        return x.div(div)


X = _x(2, 6, 7, 5, scale=2.0, shift=0.5)     # batch 2, odd spatial sizes, a mean to remove
X_SMALLVAR = _x(2, 4, 5, 3, scale=0.003)      # variance comparable to eps: eps placement visible
X3 = _x(3, 5, 9, scale=1.5)
X_TINY_ROWS = X.clone()
X_TINY_ROWS[:, :, ::2] *= 1e-7     # norms below eps: x / eps
X_TINY_ROWS[:, :, 1] = 0.0         # zero vectors: 0 / eps = 0
X5 = _x(2, 4, 3, 5, 3)

CASES = [
    case("instance_norm_plain", _affine(nn.InstanceNorm2d(6)), (X,), {"MVN", "Pooling", "Scale"}),
    case("instance_norm_affine", _affine(nn.InstanceNorm2d(6, affine=True)), (X,), {"MVN", "Scale"}),
    case("instance_norm_small_variance", _affine(nn.InstanceNorm2d(4, eps=1e-5)), (X_SMALLVAR,), {"MVN"}),
    case("instance_norm_large_eps", _affine(nn.InstanceNorm2d(6, eps=0.5, affine=True)), (X,), {"MVN"}),
    case("instance_norm_running_stats", _affine(nn.InstanceNorm2d(6, track_running_stats=True)), (X,),
         {"BatchNorm"}),
    case("instance_norm_running_stats_affine", _affine(nn.InstanceNorm2d(6, affine=True, track_running_stats=True)),
         (X,), {"BatchNorm", "Scale"}),
    case("instance_norm1d", _affine(nn.InstanceNorm1d(5, affine=True)), (X3,), {"MVN"}),
    case("instance_norm3d", _affine(nn.InstanceNorm3d(4)), (X5,), {"MVN"}),
    case("group_norm_3_groups", _affine(nn.GroupNorm(3, 6)), (X,), {"MVN", "Scale"}),
    case("group_norm_1_group", _affine(nn.GroupNorm(1, 6)), (X,), {"MVN"}),
    case("group_norm_per_channel", _affine(nn.GroupNorm(6, 6)), (X,), {"MVN"}),
    case("group_norm_no_affine_small_var", _affine(nn.GroupNorm(2, 4, affine=False)), (X_SMALLVAR,), {"MVN"}),
    case("group_norm_3d_input", _affine(nn.GroupNorm(5, 5)), (X3,), {"MVN"}),
    case("layer_norm_last_nc", _affine(nn.LayerNorm(9)), (_x(4, 9, scale=3.0),), {"MVN", "Scale"}),
    case("layer_norm_last_nlc", _affine(nn.LayerNorm(5)), (X3.transpose(1, 2).contiguous(),), {"MVN"}),
    case("layer_norm_nlc_no_affine", _affine(nn.LayerNorm(5, elementwise_affine=False)), (X3.transpose(1, 2).contiguous(),),
         {"MVN"}),
    case("layer_norm_two_dims", _affine(nn.LayerNorm([7, 5])), (X,), {"MVN", "Scale"}),
    case("layer_norm_three_dims", _affine(nn.LayerNorm([6, 7, 5])), (X,), {"MVN", "Scale"}),
    case("layer_norm_nchw_last", _affine(nn.LayerNorm(5, eps=1e-6)), (X,), {"MVN"}),
    case("layer_norm_no_bias", _affine(nn.LayerNorm(9, bias=False)), (_x(4, 9),), {"MVN", "Scale"}),
    case("layer_norm_small_variance", _affine(nn.LayerNorm([4, 5, 3])), (X_SMALLVAR,), {"MVN"}),
    case("normalize_dim1", lambda x: F.normalize(x, dim=1), (X,), {"Convolution", "Eltwise"}),
    case("normalize_2d_rows", lambda x: F.normalize(x), (_x(5, 16),), {"Eltwise"}),
    case("normalize_last_dim", lambda x: F.normalize(x, p=2, dim=-1), (X3,), {"Eltwise"}),
    case("normalize_dim2", lambda x: F.normalize(x, dim=2), (X,), {"Eltwise"}),
    case("normalize_p1", lambda x: F.normalize(x, p=1, dim=1), (X,), {"AbsVal"}),
    case("normalize_p3", lambda x: F.normalize(x, p=3.0, dim=1, eps=1e-6), (X,), {"AbsVal"}),
    case("normalize_tiny_and_zero_rows", lambda x: F.normalize(x, dim=1, eps=1e-6), (X_TINY_ROWS,), {"Eltwise"}),
    case("normalize_large_eps", lambda x: F.normalize(x, dim=1, eps=2.0), (X,), {"ReLU"}),
    case("lrn_size5", nn.LocalResponseNorm(5), (X,), {"LRN"}),
    case("lrn_size3_alpha_beta", nn.LocalResponseNorm(3, alpha=0.1, beta=0.6), (X,), {"LRN"}),
    case("lrn_k2", nn.LocalResponseNorm(5, alpha=0.5, beta=0.75, k=2.0), (X,), {"LRN", "Power"}),
    case("lrn_size_wider_than_channels", nn.LocalResponseNorm(9, alpha=0.3, beta=0.75), (X,), {"LRN"}),
    case("lrn_size1", nn.LocalResponseNorm(1, alpha=0.3, beta=0.5), (X,), {"LRN"}),
    case("lrn_even_size4", nn.LocalResponseNorm(4, alpha=0.2, beta=0.75, k=1.0), (X,), {"Pooling", "Slice"}),
    case("lrn_even_size2_k", nn.LocalResponseNorm(2, alpha=0.5, beta=1.0, k=1.5), (X,), {"Pooling", "Slice"}),
    case("lrn_k0_odd", nn.LocalResponseNorm(3, alpha=1.0, beta=0.5, k=0.0), (X + 3.0,), {"Pooling"}),
    case("lrn_3d_input", nn.LocalResponseNorm(3, alpha=0.2), (X3,), {"LRN"}),
    case("lrn_5d_input", nn.LocalResponseNorm(3, alpha=0.2, k=1.5), (X5,), {"LRN"}),
    case("cross_map_lrn_avg_pool3d", CrossMapLRN(5, alpha=0.3, beta=0.75), (X,), {"Pooling", "Power"}),
    case("cross_map_lrn_size3", CrossMapLRN(3, alpha=1e-2, beta=0.75), (_x(1, 9, 6, 6, scale=4.0),), {"Pooling"}),
    case("avg_pool3d_full", lambda x: F.avg_pool3d(x, 3, stride=2, padding=1), (X5,), {"Pooling"}),
    case("avg_pool3d_ceil", lambda x: F.avg_pool3d(x, (2, 3, 2), stride=(1, 2, 2), ceil_mode=True), (X5,),
         {"Pooling"}),
    case("max_pool3d_depth", lambda x: F.max_pool3d(x, (3, 1, 1), stride=1, padding=(1, 0, 0)), (X5,),
         {"Pooling"}),
]

REFUSALS = [
    Refusal("normalize_p_inf", lambda x: F.normalize(x, p=float("inf"), dim=1), (X,), "only finite p"),
    Refusal("normalize_eps_underflow", lambda x: F.normalize(x, p=4.0, dim=1), (X,), "not a normal float32"),
    Refusal("avg_pool3d_exclude_pad", lambda x: F.avg_pool3d(x, 3, 1, 1, count_include_pad=False), (X5,),
            "count_include_pad=False"),
]


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_norm(c, runtime, tmp_path):
    run_case(c, runtime, tmp_path)


@pytest.mark.parametrize("r", REFUSALS, ids=ids(REFUSALS))
def test_norm_refused(r):
    run_refusal(r)


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_norm_replays_from_canonical_params(c):
    check_reference_replay(c)
