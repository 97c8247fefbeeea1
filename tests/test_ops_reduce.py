"""Reductions over any dim (mean, sum, amax/amin, max/min over a dim), logsumexp and torch.stack, on
both real runtimes: each case is converted and compared with eager PyTorch (op_cases.run_case)."""
import pytest
import torch

from canonical import check_reference_replay
from op_cases import Refusal, case, ids, run_case, run_refusal

torch.manual_seed(14)


def _x(*shape):
    return torch.randn(*shape)


X4 = _x(2, 5, 7, 3)       # odd sizes, batch 2
X3 = _x(3, 6, 5)
X5 = _x(2, 4, 3, 5, 3)


def cbam_pool(x):
    """CBAM spatial attention input: channel max and mean, joined."""
    return torch.cat([torch.max(x, 1, keepdim=True)[0], torch.mean(x, 1, keepdim=True)], dim=1)


def radix_sum(x, radix=2):
    """Split-attention (ResNeSt) radix sum: view the channels as radix groups and add them."""
    n, c, h, w = x.shape
    return x.view(n, radix, c // radix, h, w).sum(dim=1)


def stack_mean(x):
    """Branches joined by stack + mean (multi-scale fusion)."""
    return torch.stack([x, x * 2.0, torch.relu(x)], dim=0).mean(0)


CASES = [
    case("mean_channels", lambda x: x.mean(1), (X4,), {"Pooling"}),
    case("mean_channels_keepdim", lambda x: x.mean(1, keepdim=True), (X4,), {"Pooling"}),
    case("mean_spatial_keepdim", lambda x: x.mean((2, 3), keepdim=True), (X4,), {"Pooling"}),
    case("mean_h_only", lambda x: x.mean(2), (X4,), {"Pooling"}),
    case("mean_w_negative_dim", lambda x: x.mean(-1, keepdim=True), (X4,), {"Pooling"}),
    case("mean_dims_1_3", lambda x: x.mean((1, 3)), (X4,), {"Pooling"}),
    case("mean_3d_last", lambda x: x.mean(2), (X3,), {"Pooling"}),
    case("mean_3d_middle", lambda x: x.mean(1, keepdim=True), (X3,), {"Pooling"}),
    case("mean_all_but_batch", lambda x: x.mean((1, 2, 3)), (X4,), {"Pooling"}),
    case("mean_5d_dim2", lambda x: x.mean(2), (X5,), {"Pooling"}),
    case("mean_2d", lambda x: x.mean(1, keepdim=True), (_x(4, 9),), {"Pooling"}),
    case("sum_channels", lambda x: x.sum(1), (X4,), {"Convolution"}),
    case("sum_channels_keepdim", lambda x: torch.sum(x, dim=1, keepdim=True), (X4,), {"Convolution"}),
    case("sum_spatial", lambda x: x.sum((2, 3)), (X4,), {"Convolution"}),
    case("sum_last", lambda x: x.sum(-1, keepdim=True), (X3,), {"Convolution"}),
    case("sum_dims_1_3_keepdim", lambda x: x.sum((1, 3), keepdim=True), (X4,), {"Convolution"}),
    case("sum_2d", lambda x: x.sum(1), (_x(3, 11),), {"Convolution"}),
    case("sum_radix_view", radix_sum, (_x(2, 6, 5, 3),), {"Convolution"}),
    case("sum_radix_5d_dim1", lambda x: x.sum(1), (X5,), {"Convolution"}),
    case("amax_channels_keepdim", lambda x: torch.amax(x, 1, keepdim=True), (X4,), {"Pooling"}),
    case("amax_spatial", lambda x: x.amax((2, 3)), (X4,), {"Pooling"}),
    case("amax_dims_1_2", lambda x: x.amax((1, 2)), (X3,), {"Pooling"}),
    case("amin_channels", lambda x: torch.amin(x, 1), (X4,), {"Pooling", "Power"}),
    case("amin_dims_2_3_keepdim", lambda x: x.amin((2, 3), keepdim=True), (X4,), {"Pooling"}),
    case("max_dim_values_index", lambda x: torch.max(x, 1)[0], (X4,), {"Pooling"}),
    case("max_dim_values_attr_keepdim", lambda x: x.max(dim=1, keepdim=True).values, (X4,), {"Pooling"}),
    case("max_dim_last", lambda x: x.max(-1)[0], (X3,), {"Pooling"}),
    case("max_dim_stacked", lambda x: torch.stack([x, -x, x * 0.5], 1).max(1)[0], (X3,), {"Pooling", "Concat"}),
    case("min_dim_keepdim", lambda x: x.min(dim=1, keepdim=True)[0], (X4,), {"Pooling"}),
    case("min_dim_values", lambda x: torch.min(x, 2).values, (X3,), {"Pooling"}),
    case("max_all", lambda x: x.max().reshape(1), (X3,), {"Pooling"}),
    case("max_binary", lambda x: torch.max(x, x * -1.5), (X4,), {"Eltwise"}),
    case("min_binary", lambda x: torch.min(x, torch.sigmoid(x)), (X4,), {"Eltwise"}),
    case("cbam_channel_pool", cbam_pool, (X4,), {"Pooling", "Concat"}),
    case("stack_dim0_mean", stack_mean, (X4,), {"Concat", "Pooling"}),
    case("stack_dim1", lambda x: torch.stack([x, x.sigmoid()], 1), (X4,), {"Concat"}),
    case("stack_last", lambda x: torch.stack([x, x.tanh(), x], -1), (X3,), {"Concat"}),
    case("stack_dim2_sum", lambda x: torch.stack([x, 2 * x], 2).sum(2), (X3,), {"Concat", "Convolution"}),
    case("logsumexp_channels", lambda x: torch.logsumexp(x * 30, 1), (X4,), {"Exp", "Log"}),
    case("logsumexp_last_keepdim", lambda x: x.logsumexp(-1, keepdim=True), (X3,), {"Exp", "Log"}),
    case("logsumexp_4d_last", lambda x: torch.logsumexp(x, 3), (X4,), {"Exp", "Log"}),
    case("logsumexp_4d_spatial", lambda x: torch.logsumexp(x * 10, (2, 3), keepdim=True), (X4,), {"Exp", "Log"}),
]

REFUSALS = [
    Refusal("max_dim_indices_used", lambda x: torch.max(x, 1)[1], (X4,), "indices of max"),
    Refusal("min_dim_values_and_indices", lambda x: tuple(x.min(1)), (X4,), "indices of min"),
    Refusal("sum_dtype_double", lambda x: x.sum(1, dtype=torch.float64), (X4,), "float32 only"),
    Refusal("logsumexp_nonadjacent", lambda x: torch.logsumexp(x, (1, 3)), (X4,), "non-adjacent"),
]


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_reduction(c, runtime, tmp_path):
    run_case(c, runtime, tmp_path)


@pytest.mark.parametrize("r", REFUSALS, ids=ids(REFUSALS))
def test_reduction_refused(r):
    run_refusal(r)


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_reduction_replays_from_canonical_params(c):
    check_reference_replay(c)
