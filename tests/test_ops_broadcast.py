"""Broadcasting of any pattern, expand/repeat, and constants made in forward, on both real runtimes.

Each case is one op x configuration, run on OpenCV and Caffe and compared with eager PyTorch
(``op_cases.run_case``). Operands that broadcast are mostly separate graph inputs, so the graph
holds the op alone; ``ops=`` names the op a case is about where helpers are in the graph too.
"""
import pytest
import torch
import torch.nn as nn

from op_cases import Fn, Refusal, case, ids, run_case, run_refusal

torch.manual_seed(14)


def _x(*shape):
    return torch.randn(*shape)


def _pos(*shape):
    return torch.rand(*shape) + 0.5


def const(*shape):
    """A model constant (closure), not an input."""
    return torch.randn(*shape)


X = _x(2, 6, 5, 7)
W16 = const(1, 6, 1, 1)
W_NONSPAN = const(6, 1, 7)
W_C = const(6, 1, 1)
W_POS = torch.rand(6, 1, 1) + 0.5

ARITH = [
    # add / sub / rsub
    case("add_spatial_map", Fn(lambda a, b: a + b), (X, _x(2, 1, 5, 7)), {"Convolution", "Eltwise"}),
    case("add_channel_gate", Fn(lambda a, b: a + b), (X, _x(2, 6, 1, 1)), {"Deconvolution", "Eltwise"}),
    case("add_both_broadcast", Fn(lambda a, b: a + b), (_x(2, 6, 1, 1), _x(2, 1, 5, 7)),
         {"Deconvolution", "Convolution", "Eltwise"}),
    case("add_row", Fn(lambda a, b: a + b), (X, _x(2, 6, 1, 7)), {"Deconvolution"}),
    case("add_batch_broadcast", Fn(lambda a, b: a + b), (_x(3, 6, 5, 7), _x(1, 6, 5, 7)),
         {"Reshape", "Convolution", "Eltwise"}),
    case("add_lower_rank_operand", Fn(lambda a, b: b + a), (X, _x(5, 7)), {"Convolution", "Eltwise"}),
    case("add_const_channel", Fn(lambda x: x + W16), (X,), {"Scale"}),
    case("add_const_not_a_span", Fn(lambda x: x + W_NONSPAN), (X,), {"Scale"}),
    case("add_const_bigger_than_input", Fn(lambda x: x + W_C), (_x(2, 1, 5, 7),), {"Convolution", "Scale"}),
    case("add_uniform_const", Fn(lambda x: x + torch.full((6, 5, 7), 2.5)), (X,), {"Power"}),
    case("add_alpha_broadcast", Fn(lambda a, b: torch.add(a, b, alpha=0.5)), (X, _x(2, 1, 5, 7)), {"Eltwise"}),
    case("add_rank2", Fn(lambda a, b: a + b), (_x(4, 9), _x(4, 1)), {"Convolution"}),
    case("add_rank3", Fn(lambda a, b: a + b), (_x(2, 5, 9), _x(2, 5, 1)), {"Convolution"}),
    case("add_rank5", Fn(lambda a, b: a + b), (_x(2, 3, 4, 5, 6), _x(2, 3, 1, 1, 1)), {"Convolution"}),
    case("add_one_element_tensor", Fn(lambda a, b: a + b), (X, _x(1, 1, 1, 1)), {"Eltwise"}),
    case("sub_spatial_map", Fn(lambda a, b: a - b), (X, _x(2, 1, 5, 7)), {"Eltwise"}),
    case("sub_from_broadcast", Fn(lambda a, b: b - a), (X, _x(2, 1, 5, 7)), {"Eltwise"}),
    case("sub_alpha_broadcast", Fn(lambda a, b: torch.sub(a, b, alpha=2.0)), (X, _x(2, 6, 1, 1)), {"Eltwise"}),
    case("sub_const", Fn(lambda x: x - W_NONSPAN), (X,), {"Scale"}),
    case("rsub_scalar", Fn(lambda x: 1 - x), (X,), {"Power"}),
    case("rsub_broadcast_alpha", Fn(lambda a, b: torch.rsub(a, b, alpha=0.5)), (X, _x(2, 1, 5, 7)), {"Eltwise"}),
    case("rsub_const", Fn(lambda x: torch.rsub(x, W_C)), (X,), {"Scale"}),
    # mul
    case("mul_spatial_attention", Fn(lambda a, b: a * b), (X, _x(2, 1, 5, 7)), {"Convolution", "Eltwise"}),
    case("mul_channel_gate", Fn(lambda a, b: a * b), (X, _x(2, 6, 1, 1)), {"Scale"}),
    case("mul_both_broadcast", Fn(lambda a, b: a * b), (_x(2, 6, 1, 1), _x(2, 1, 5, 7)), {"Convolution", "Scale"}),
    case("mul_one_element_batch1", Fn(lambda a, b: a * b), (_x(1, 6, 5, 7), _x(1, 1, 1, 1)), {"Scale"}),
    case("mul_one_element_batch2", Fn(lambda a, b: a * b), (X, _x(1, 1, 1, 1)), {"Eltwise"}),
    case("mul_map_of_batch1", Fn(lambda a, b: a * b), (_x(3, 6, 5, 7), _x(1, 6, 5, 7)), {"Scale"}),
    case("mul_const_not_a_span", Fn(lambda x: x * W_NONSPAN), (X,), {"Scale"}),
    case("mul_rank2", Fn(lambda a, b: a * b), (_x(4, 9), _x(1, 9)), {"Scale"}),
    case("mul_rank3", Fn(lambda a, b: a * b), (_x(2, 5, 9), _x(2, 1, 9)), {"Eltwise"}),
    case("mul_rank5", Fn(lambda a, b: a * b), (_x(2, 3, 4, 5, 6), _x(2, 1, 4, 5, 6)), {"Eltwise"}),
    case("mul_square", Fn(lambda a: a * a), (X,), {"Eltwise"}),
    # div
    case("div_spatial_map", Fn(lambda a, b: a / b), (X, _pos(2, 1, 5, 7)), {"Power", "Convolution", "Eltwise"}),
    case("div_channel_gate", Fn(lambda a, b: a / b), (X, _pos(2, 6, 1, 1)), {"Power", "Scale"}),
    case("div_one_element_batch1", Fn(lambda a, b: a / b), (_x(1, 4, 4), _pos(1, 1, 1)), {"Power", "Scale"}),
    case("div_per_sample_norm", Fn(lambda a, b: a / b), (_x(2, 4, 4), _pos(2, 1, 1)), {"Power", "Scale"}),
    case("div_numerator_broadcasts", Fn(lambda a, b: b / a), (_pos(2, 6, 5, 7), _x(2, 1, 5, 7)), {"Power"}),
    case("div_const", Fn(lambda x: x / W_POS), (X,), {"Scale"}),
    case("rdiv_scalar", Fn(lambda a: 2 / a), (_pos(2, 6, 5, 7),), {"Power"}),
    case("rdiv_const_tensor", Fn(lambda a: W_C / a), (_pos(2, 6, 5, 7),), {"Power", "Scale"}),
    # maximum / minimum
    case("maximum_spatial_map", Fn(lambda a, b: torch.maximum(a, b)), (X, _x(2, 1, 5, 7)), {"Eltwise"}),
    case("maximum_const", Fn(lambda x: torch.maximum(x, W_C)), (X,), {"Scale", "Eltwise"}),
    case("maximum_zero_is_relu", Fn(lambda x: torch.maximum(x, torch.tensor(0.0))), (X,), {"ReLU"}),
    case("minimum_same_shape", Fn(lambda a, b: torch.minimum(a, b)), (X, _x(2, 6, 5, 7)), {"Eltwise", "Power"}),
    case("minimum_both_broadcast", Fn(lambda a, b: torch.minimum(a, b)), (_x(2, 6, 1, 1), _x(2, 1, 5, 7)),
         {"Eltwise"}),
    case("minimum_const", Fn(lambda x: torch.minimum(x, W_C)), (X,), {"Scale", "Eltwise"}),
    case("minimum_scalar", Fn(lambda x: torch.minimum(x, torch.tensor(0.3))), (X,), {"ReLU"}),
]

REPEATS = [
    case("expand_channels", Fn(lambda a: a.expand(2, 6, 5, 7)), (_x(2, 1, 5, 7),), {"Convolution"}),
    case("expand_spatial", Fn(lambda a: a.expand(-1, -1, 5, 7)), (_x(2, 6, 1, 1),), {"Deconvolution"}),
    case("expand_channels_and_rows", Fn(lambda a: a.expand(2, 6, 5, 7)), (_x(2, 1, 1, 7),),
         {"Convolution", "Deconvolution"}),
    case("expand_batch", Fn(lambda a: a.expand(3, 6, 5, 7)), (_x(1, 6, 5, 7),), {"Reshape", "Convolution"}),
    case("expand_new_leading_dims", Fn(lambda a: a.expand(2, 6, 5, 7)), (_x(5, 7),), {"Reshape", "Convolution"}),
    case("expand_rank3", Fn(lambda a: a.expand(2, 5, 9)), (_x(2, 1, 9),), {"Convolution"}),
    case("expand_as", Fn(lambda a, b: a.expand_as(b)), (_x(2, 6, 1, 1), X), {"Deconvolution"}),
    case("broadcast_to", Fn(lambda a: torch.broadcast_to(a, (2, 6, 5, 7))), (_x(6, 1, 7),), {"Convolution"}),
    case("repeat_channels", Fn(lambda a: a.repeat(1, 3, 1, 1)), (X,), {"Concat"}),
    case("repeat_spatial", Fn(lambda a: a.repeat(1, 1, 2, 3)), (X,), {"Concat"}),
    case("repeat_new_dim", Fn(lambda a: a.repeat(2, 1, 1, 1)), (_x(6, 5, 7),), {"Reshape", "Concat"}),
    case("repeat_batch_odd", Fn(lambda a: a.repeat(3, 1, 1, 1)), (_x(1, 3, 9, 11),), {"Concat"}),
    case("tile_short_dims", Fn(lambda a: torch.tile(a, (2,))), (X,), {"Concat"}),
]


class ConvGRUCell(nn.Module):
    """A recurrent attention cell started from a zero state made in forward (x.new_zeros)."""

    def __init__(self, cin, hidden, steps=3):
        super().__init__()
        self.hidden, self.steps = hidden, steps
        self.gates = nn.Conv2d(cin + hidden, 2 * hidden, 3, padding=1)
        self.cand = nn.Conv2d(cin + hidden, hidden, 3, padding=1)

    def forward(self, x):
        n, _, h, w = x.shape
        state = x.new_zeros(n, self.hidden, h, w)
        for _ in range(self.steps):
            z, r = torch.sigmoid(self.gates(torch.cat([x, state], 1))).chunk(2, 1)
            cand = torch.tanh(self.cand(torch.cat([x, r * state], 1)))
            state = (1 - z) * state + z * cand
        return state


class ZeroStateLSTM(nn.Module):
    """2017 style: h0/c0 from zeros_like of a slice of the input, Variable(x.data.new(...).zero_())."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(2 * c, 4 * c, 1)

    def forward(self, x):
        h = torch.zeros_like(x)
        cell = x.data.new(x.size()).zero_()
        for _ in range(2):
            i, f, o, g = self.conv(torch.cat([x, h], 1)).chunk(4, 1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(cell)
        return h


def _filled(x):
    y = x.clone()
    y.fill_(2.0)       # x.fill_: depends on the shape only
    return x * y


CONSTANTS = [
    case("zeros_like_added", Fn(lambda x: x + torch.zeros_like(x)), (X,), {"Power"}, ops=("add",)),
    case("ones_like_scaled", Fn(lambda x: x * torch.ones_like(x) * 3), (X,), {"Power"}, ops=("mul",)),
    case("full_like_max", Fn(lambda x: torch.maximum(x, torch.full_like(x, 0.5))), (X,), {"ReLU"},
         ops=("maximum",)),
    case("new_full_sub", Fn(lambda x: x - x.new_full((6, 5, 7), 1.5)), (X,), {"Power"}, ops=("sub",)),
    case("fill_in_place", Fn(_filled), (X,), {"Power"}, ops=("mul",)),
    case("times_zero_state", Fn(lambda x: torch.sigmoid(x) + x * 0), (X,), {"Power", "Eltwise"}, ops=("mul",)),
    case("zeros_of_size_added", Fn(lambda x: x + torch.zeros(x.size())), (X,), {"Power"}, ops=("add",)),
    case("cat_zeros_like_channels", Fn(lambda x: torch.cat([x, torch.zeros_like(x)], 1)), (X,),
         {"Power", "Concat"}, ops=("cat",)),
    case("cat_zeros_fewer_channels", Fn(lambda x: torch.cat([torch.zeros(2, 3, 5, 7), x], 1)), (X,),
         {"Power", "Slice", "Concat"}, ops=("cat",)),
    case("cat_zeros_more_channels", Fn(lambda x: torch.cat([x, x.new_zeros(2, 9, 5, 7)], 1)), (X,),
         {"Power", "Convolution", "Concat"}, ops=("cat",)),
    case("cat_constant_map", Fn(lambda x: torch.cat([x, torch.arange(35.0).view(1, 1, 5, 7).expand(2, 1, 5, 7)], 1)),
         (X,), {"Scale", "Concat"}, ops=("cat",)),
    case("conv_gru_zero_state", ConvGRUCell(6, 4).eval(), (X,), {"Concat", "Sigmoid"},
         ops=("cat", "mul", "rsub", "add")),
    case("lstm_zero_state_legacy", ZeroStateLSTM(6).eval(), (X,), {"Concat"}, ops=("cat", "mul", "add")),
]

CASES = ARITH + REPEATS + CONSTANTS


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_broadcast_op_on_runtime(c, runtime, tmp_path):
    run_case(c, runtime, tmp_path)


def _sigmoid_reciprocal_times(x):
    return (1 / (torch.sigmoid(x) + 1)) * 3   # Power(-1) then a scaling Power: OpenCV would fuse them wrongly


def test_power_pair_is_kept_apart_for_opencv(runtime, tmp_path):
    """OpenCV fuses Power(power=-1) with a Power reading it and gets it wrong; runtime_quirks.py puts a copy between."""
    graph = run_case(case("power_after_reciprocal", Fn(_sigmoid_reciprocal_times), (X,), {"Power"}), runtime,
                     tmp_path)
    assert [n.op for n in graph.nodes] == ["sigmoid", "add", "div", "mul"]


REFUSALS = [
    Refusal("div_floor", Fn(lambda a, b: torch.div(a, b, rounding_mode="floor")), (X, _pos(2, 1, 5, 7)),
            r"div\(rounding_mode='floor'\)"),
    Refusal("div_by_zero_constant", Fn(lambda x: x / torch.zeros(6, 1, 1)), (X,), r"division by a zero constant"),
    Refusal("randn_like_state", Fn(lambda x: x + torch.randn_like(x)), (X,), r"no Caffe mapping for `randn_like`"),
    Refusal("empty_like_state", Fn(lambda x: x + torch.empty_like(x)), (X,), r"no Caffe mapping for `empty_like`"),
]


@pytest.mark.parametrize("r", REFUSALS, ids=ids(REFUSALS))
def test_broadcast_refusal(r):
    run_refusal(r)


_CONV = nn.Conv2d(3, 4, 3).eval()
_MAP = torch.rand(1, 4, 6, 6) + 0.5
_BIAS_MAP = torch.randn(4, 6, 6)
FOLDED = [
    case("conv_times_constant_map", Fn(lambda x: _CONV(x) * _MAP), (torch.randn(2, 3, 8, 8),), {"Split", "Scale"}),
    case("conv_plus_constant_map", Fn(lambda x: _CONV(x) + _BIAS_MAP), (torch.randn(2, 3, 8, 8),), {"Split"}),
    case("conv_power_constant_map", Fn(lambda x: (_CONV(x) * 2 + 1) * _MAP), (torch.randn(1, 3, 8, 8),)),
]


@pytest.mark.parametrize("c", FOLDED, ids=ids(FOLDED))
def test_a_per_position_scale_after_a_weighted_layer(c, runtime, tmp_path):
    """OpenCV folds a Scale into the Convolution before it and aborts unless the Scale has one value per
    channel; an identity Split keeps them apart (runtime_quirks.keep_fusions_apart)."""
    run_case(c, runtime, tmp_path)
