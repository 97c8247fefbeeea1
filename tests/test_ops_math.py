"""Elementwise math on both real runtimes: powers and roots, abs/exp/log/neg, softplus (beta,
threshold), mish, log-sigmoid, GELU (tanh), threshold, sigmoid/tanh spellings; refusals with reasons."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from canonical import check_reference_replay
from op_cases import Refusal, case, ids, run_case, run_refusal

torch.manual_seed(9)


def _x(*shape, scale=1.0, shift=0.0):
    return torch.randn(*shape) * scale + shift


X = _x(2, 5, 7, 3, scale=2.0)                        # both signs
POS = torch.rand(2, 5, 7, 3) * 4.0 + 0.05             # positive: roots, logs, reciprocals
WIDE = torch.linspace(-60.0, 60.0, 2 * 3 * 41).reshape(2, 3, 41)   # softplus/mish tails
# values straddling PyTorch's softplus switch to the identity (beta * x = threshold)
SWITCH = torch.cat([torch.linspace(19.0, 21.0, 41), torch.linspace(9.5, 10.5, 41), torch.linspace(4.0, 6.0, 41)]
                   ).reshape(1, 3, 41)

def _bn1():
    """x² into a one-channel BatchNorm: OpenCV would fold the BatchNorm's scalar scale into the Power."""
    bn = nn.BatchNorm2d(1).eval()
    with torch.no_grad():
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
        bn.weight.fill_(1.5)
        bn.bias.fill_(-0.2)
    return nn.Sequential(Square(), bn).eval()


class Square(nn.Module):
    def forward(self, x):
        return x ** 2


CASES = [
    case("pow_2", lambda x: x.pow(2), (X,), {"Power"}),
    case("pow_operator_2", lambda x: x ** 2, (X,), {"Power"}),
    case("pow_3_negative_bases", lambda x: torch.pow(x, 3), (X,), {"Power"}),
    case("pow_int_minus2", lambda x: x ** -2, (X,), {"Power"}),
    case("pow_half_positive", lambda x: x ** 0.5, (POS,), {"Power"}),
    case("pow_0_75_positive", lambda x: x.pow(0.75), (POS,), {"Power"}),
    case("pow_0", lambda x: x.pow(0), (X,), {"Power"}),
    case("pow_inplace", lambda x: (x * 1.0).pow_(2.0), (X,), {"Power"}),
    case("rpow_2", lambda x: 2 ** x, (X,), {"Exp"}),
    case("pow_scalar_base", lambda x: torch.pow(0.5, x), (X,), {"Exp"}),
    case("square", lambda x: torch.square(x), (X,), {"Power"}),
    case("sqrt", lambda x: torch.sqrt(x), (POS,), {"Power"}),
    case("sqrt_method", lambda x: x.sqrt(), (POS,), {"Power"}),
    case("rsqrt", lambda x: torch.rsqrt(x), (POS,), {"Power"}),
    case("reciprocal", lambda x: x.reciprocal(), (POS,), {"Power"}),
    case("reciprocal_negative", lambda x: torch.reciprocal(x - 5.0), (POS,), {"Power"}),
    case("abs", lambda x: x.abs(), (X,), {"AbsVal"}),
    case("abs_torch", lambda x: torch.abs(x), (X,), {"AbsVal"}),
    case("exp", lambda x: torch.exp(x), (X,), {"Exp"}),
    case("log", lambda x: torch.log(x), (POS,), {"Log"}),
    case("log2", lambda x: torch.log2(x), (POS,), {"Log"}),
    case("log10", lambda x: x.log10(), (POS,), {"Log"}),
    case("neg", lambda x: -x, (X,), {"Power"}),
    case("neg_torch", lambda x: torch.neg(x), (X,), {"Power"}),
    # Power(p != 1) followed by a scale/shift: OpenCV fuses that pair wrongly unless it is kept apart
    case("sqrt_times_2", lambda x: x.sqrt() * 2.0, (POS,), {"Power", "Split"}),
    case("one_minus_square", lambda x: 1 - x.pow(2), (X,), {"Power", "Split"}),
    case("rsqrt_plus_eps_then_shift", lambda x: torch.rsqrt(x) + 0.5, (POS,), {"Power", "Split"}),
    case("reciprocal_then_neg", lambda x: -x.reciprocal(), (POS,), {"Power", "Split"}),
    case("sqrt_read_twice", lambda x: (lambda r: r * 2.0 + r)(x.sqrt()), (POS,), {"Power"}),
    case("square_then_batchnorm_1ch", _bn1(), (POS[:, :1],), {"Power", "BatchNorm", "Split"}),
    case("softplus_default", nn.Softplus(), (WIDE,), {"BNLL"}),
    case("softplus_at_switch", nn.Softplus(), (SWITCH,), {"BNLL"}),
    case("softplus_beta2", nn.Softplus(beta=2.0), (WIDE,), {"BNLL", "Power"}),
    case("softplus_beta_half_at_switch", nn.Softplus(beta=0.5, threshold=20), (SWITCH * 2.0,), {"BNLL"}),
    case("softplus_threshold_30", lambda x: F.softplus(x, threshold=30.0), (WIDE,), {"BNLL"}),
    case("mish", nn.Mish(), (WIDE,), {"BNLL", "TanH", "Eltwise"}),
    case("mish_functional", lambda x: F.mish(x), (X,), {"BNLL"}),
    case("log_sigmoid", nn.LogSigmoid(), (WIDE,), {"BNLL"}),
    case("log_sigmoid_functional", lambda x: F.logsigmoid(x), (X,), {"BNLL"}),
    case("gelu_tanh", nn.GELU(approximate="tanh"), (X,), {"TanH", "Eltwise"}),
    case("gelu_tanh_wide", lambda x: F.gelu(x, approximate="tanh"), (WIDE,), {"TanH"}),
    case("threshold_value_eq_threshold", nn.Threshold(0.5, 0.5), (X,), {"ReLU"}),
    case("threshold_zero", nn.Threshold(0.0, 0.0), (X,), {"ReLU"}),
    case("threshold_functional", lambda x: F.threshold(x, -1.0, -1.0), (X,), {"ReLU"}),
    case("where_leaky", lambda x: torch.where(x > 0, x, 0.1 * x), (X,), {"ReLU"}),
    case("where_leaky_ge_x_times_c", lambda x: torch.where(x >= 0, x, x * 0.25), (X,), {"ReLU"}),
    case("where_leaky_lt_swapped", lambda x: torch.where(x < 0, 0.2 * x, x), (X,), {"ReLU"}),
    case("where_relu_zero", lambda x: torch.where(0 < x, x, 0.0), (X,), {"ReLU"}),
    case("where_clamp_min_method", lambda x: x.where(x >= 0.5, torch.tensor(0.5)), (X,), {"ReLU"}),
    case("where_clamp_max", lambda x: torch.where(x < 1.5, x, 1.5), (X,), {"ReLU"}),
    case("sigmoid_functional", lambda x: F.sigmoid(x), (X,), {"Sigmoid"}),
    case("sigmoid_torch", lambda x: torch.sigmoid(x), (X,), {"Sigmoid"}),
    case("sigmoid_inplace_method", lambda x: (x * 1.0).sigmoid_(), (X,), {"Sigmoid"}),
    case("tanh_inplace_method", lambda x: (x + 0.0).tanh_(), (X,), {"TanH"}),
    case("tanh_functional", lambda x: F.tanh(x), (X,), {"TanH"}),
]

REFUSALS = [
    Refusal("gelu_erf", nn.GELU(), (X,), "needs erf"),
    Refusal("erf", lambda x: torch.erf(x), (X,), "no exact construction"),
    Refusal("softplus_threshold_visible", nn.Softplus(beta=1.0, threshold=10.0), (X,), "visible in float32"),
    Refusal("softplus_beta3_threshold5", nn.Softplus(beta=3.0, threshold=5.0), (X,), "visible in float32"),
    Refusal("threshold_jump", nn.Threshold(0.1, 20.0), (X,), "needs a step"),
    Refusal("where_other_select", lambda x: torch.where(x > 0, x, torch.tanh(x)), (X,), "selects by a mask"),
    Refusal("where_jump", lambda x: torch.where(x > 0.5, x, 0.0), (X,), "boolean tensor"),
    Refusal("pow_tensor_exponent", lambda x: x.abs() ** x, (X,), "tensor exponent"),
    Refusal("rpow_negative_base", lambda x: (-2.0) ** x, (X,), "positive base"),
]


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_math(c, runtime, tmp_path):
    run_case(c, runtime, tmp_path)


@pytest.mark.parametrize("r", REFUSALS, ids=ids(REFUSALS))
def test_math_refused(r):
    run_refusal(r)


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_math_replays_from_canonical_params(c):
    check_reference_replay(c)


def test_where_forms_become_activations():
    from conversion import capture
    graph, _ = capture(lambda x: torch.where(x > 0, x, 0.1 * x), X)
    assert [n.op for n in graph.nodes] == ["leaky_relu"]
    assert graph.nodes[0].params["negative_slope"] == 0.1


def test_powers_kept_apart_only_where_opencv_would_fuse():
    from tracecap.mappers import caffe
    from conversion import capture
    split_after = {}
    for name, fn in (("alone", lambda x: x.sqrt() * 2.0), ("read_twice", lambda x: (lambda r: r * 2.0 + r)(x.sqrt())),
                     ("linear_power", lambda x: (x * 3.0) + 1.0)):
        graph, _ = capture(fn, POS)
        types = [layer.type for layer in caffe.to_layers(graph, "opencv")]
        split_after[name] = types.count("Split")
    assert split_after == {"alone": 1, "read_twice": 0, "linear_power": 0}
