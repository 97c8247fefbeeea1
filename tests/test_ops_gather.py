"""Channel gathers, steps, flips, rolls and writes into slices, on both real runtimes.

One case per op x configuration (``op_cases``): odd sizes, batch > 1, every axis. Writes through
views (``x1.add_(...)`` on a chunk, ``y[:, :1].relu_()``) are followed by the builder and become
``setitem`` nodes, so they are cases of ``setitem`` here.
"""
import pytest
import torch

from op_cases import Fn, Refusal, case, ids, run_case, run_refusal

torch.manual_seed(6)
_x = torch.randn


X = _x(2, 6, 5, 7)
X16 = _x(2, 16, 6, 9)
X_ODD = _x(3, 5, 9, 11)
PERM = torch.tensor([3, 1, 0, 2, 5, 4])
IDX2D = torch.tensor([[0, 2], [4, 1]])
MASK = torch.tensor([True, False, True, True, False, True])
SHUFFLE = [0, 3, 1, 4, 2, 5]


def _focus(x):  # YOLOv5's space-to-depth
    return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


GETITEM = [
    case("getitem_step_channels", Fn(lambda x: x[:, ::2]), (X,), {"Slice", "Concat"}),
    case("getitem_step_long_axis", Fn(lambda x: x[:, ::2]), (X16,), {"Reshape", "Slice"}),
    case("getitem_step_offset", Fn(lambda x: x[:, 1::3]), (X16,), {"Slice"}),
    case("getitem_step_spatial_odd", Fn(lambda x: x[..., ::2, 1::2]), (X_ODD,), {"Slice", "Concat"}),
    case("getitem_focus_space_to_depth", Fn(_focus), (_x(2, 3, 8, 10),), {"Slice", "Concat"}, ops=("getitem",)),
    case("getitem_list_permutation", Fn(lambda x: x[:, SHUFFLE]), (X,), {"Slice", "Concat"}),
    case("getitem_list_repeats", Fn(lambda x: x[:, [0, 0, 2]]), (X,), {"Concat", "Silence"}),
    case("getitem_list_negative", Fn(lambda x: x[:, [-1, 0]]), (X,), {"Concat"}),
    case("getitem_const_tensor", Fn(lambda x: x[:, PERM]), (X,), {"Concat"}),
    case("getitem_const_tensor_2d", Fn(lambda x: x[:, IDX2D]), (X,), {"Concat", "Reshape"}),
    case("getitem_bool_mask", Fn(lambda x: x[:, MASK]), (X,), {"Concat"}),
    case("getitem_list_last_dim", Fn(lambda x: x[..., [4, 2, 6]]), (X,), {"Concat"}),
    case("getitem_list_batch", Fn(lambda x: x[[2, 0]]), (X_ODD,), {"Concat"}),
    case("getitem_int_and_list", Fn(lambda x: x[:, 0, [1, 3]]), (X,), {"Slice", "Reshape"}),
    case("getitem_step_and_list", Fn(lambda x: x[:, ::2, [0, 2, 4]]), (X,), {"Concat"}),
    case("getitem_rank2_list", Fn(lambda x: x[:, [4, 1, 2]]), (_x(3, 5),), {"Concat"}),
]

SELECTS = [
    case("index_select_channels", Fn(lambda x: x.index_select(1, PERM)), (X,), {"Slice", "Concat"}),
    case("index_select_width", Fn(lambda x: torch.index_select(x, 3, torch.tensor([6, 0, 3]))), (X,), {"Concat"}),
    case("index_select_batch", Fn(lambda x: x.index_select(0, torch.tensor([1, 1, 0]))), (X,), {"Concat"}),
    case("index_select_negative_dim", Fn(lambda x: x.index_select(-2, torch.tensor([4, 0]))), (X,), {"Concat"}),
    case("index_select_single", Fn(lambda x: x.index_select(1, torch.tensor([4]))), (X,), {"Slice"}),
    case("flip_channels", Fn(lambda x: torch.flip(x, [1])), (X,), {"Slice", "Concat"}),
    case("flip_spatial_odd", Fn(lambda x: x.flip(2, 3)), (X_ODD,), {"Slice", "Concat"}),
    case("flip_last", Fn(lambda x: torch.flip(x, (-1,))), (_x(2, 3, 9),), {"Concat"}),
    case("fliplr", Fn(lambda x: torch.fliplr(x)), (X,), {"Concat"}),
    case("flipud", Fn(lambda x: torch.flipud(x)), (X_ODD,), {"Concat"}),
    case("roll_channels", Fn(lambda x: torch.roll(x, 2, 1)), (X,), {"Slice", "Concat"}),
    case("roll_negative_width", Fn(lambda x: x.roll(-3, 3)), (X,), {"Concat"}),
    case("roll_two_dims", Fn(lambda x: torch.roll(x, (1, 4), (2, 3))), (X_ODD,), {"Concat"}),
    case("roll_more_than_size", Fn(lambda x: torch.roll(x, 8, 1)), (X,), {"Concat"}),
    case("roll_flattened", Fn(lambda x: torch.roll(x, 5)), (X,), {"Reshape", "Concat"}),
    case("narrow", Fn(lambda x: x.narrow(1, 2, 3)), (X,), {"Slice"}),
    case("narrow_negative_start", Fn(lambda x: torch.narrow(x, 3, -4, 2)), (X,), {"Slice"}),
    case("select_channel", Fn(lambda x: x.select(1, 2)), (X,), {"Slice", "Reshape"}),
    case("select_last", Fn(lambda x: torch.select(x, -1, 0)), (X,), {"Slice", "Reshape"}),
]


def _setter(index, value_fn, base=lambda x: x.clone()):
    def fn(x):
        y = base(x)
        y[index] = value_fn(x)
        return y
    return fn


def _chunk_add(x):
    y = x * 1
    a, b = y.chunk(2, 1)
    a.add_(b)          # through a view: y changes where a lies
    return y


def _relu_part(x):
    y = x * 1
    y[:, :1].relu_()
    return y


def _zero_part(x):
    y = x * 1
    y.narrow(1, 2, 2).zero_()
    return y


def _reshaped_view_write(x):
    y = x * 1
    y.view(2, -1)[:, :11].mul_(2)
    return y


def _copy_into_view(x):
    y = x * 1
    y[:, 4:].copy_(x[:, :1])
    return y


def _zeros_base(x):
    out = torch.zeros(2, 9, 5, 7)
    out[:, 2:8] = x
    return out


SETITEMS = [
    case("setitem_channels", Fn(_setter((slice(None), slice(1, 3)), lambda x: x[:, :2] * 2)), (X,),
         {"Slice", "Concat"}, ops=("setitem",)),
    case("setitem_scalar", Fn(_setter((slice(None), slice(2, 5)), lambda x: 0.5)), (X,), {"Power", "Concat"},
         ops=("setitem",)),
    case("setitem_broadcast_value", Fn(_setter((slice(None), slice(None, 3)), lambda x: x[:, 5:6] + 1)), (X,),
         {"Convolution", "Concat"}, ops=("setitem",)),
    case("setitem_int", Fn(_setter((slice(None), 2), lambda x: x[:, 0] * 3)), (X,), {"Reshape", "Concat"},
         ops=("setitem",)),
    case("setitem_list", Fn(_setter((slice(None), [4, 0]), lambda x: x[:, 1:3] - 1)), (X,), {"Concat"},
         ops=("setitem",)),
    case("setitem_step", Fn(_setter((slice(None), slice(None, None, 2)), lambda x: x[:, 3:] * 2)), (X,),
         {"Concat"}, ops=("setitem",)),
    case("setitem_two_axes_odd", Fn(_setter((slice(None), slice(1, 4), slice(2, None)),
                                            lambda x: x[:, :3, :7] * 2)), (X_ODD,), {"Concat"}, ops=("setitem",)),
    case("setitem_ellipsis_const", Fn(_setter((Ellipsis, slice(None, 2)), lambda x: torch.arange(2.0))), (X,),
         {"Scale", "Concat"}, ops=("setitem",)),
    case("setitem_into_zeros", Fn(_zeros_base), (X,), {"Power", "Concat"}, ops=("setitem",)),
    case("view_write_chunk_add", Fn(_chunk_add), (X,), {"Eltwise", "Concat"}, ops=("setitem", "add")),
    case("view_write_relu_part", Fn(_relu_part), (X_ODD,), {"ReLU", "Concat"}, ops=("setitem", "relu")),
    case("view_write_zero_part", Fn(_zero_part), (X,), {"Power", "Concat"}, ops=("setitem",)),
    case("view_write_through_reshape", Fn(_reshaped_view_write), (X,), {"Reshape", "Concat"}, ops=("setitem",)),
    case("copy_into_view", Fn(_copy_into_view), (X,), {"Convolution", "Concat"}, ops=("copy", "setitem")),
]

CASES = GETITEM + SELECTS + SETITEMS


@pytest.mark.parametrize("c", CASES, ids=ids(CASES))
def test_gather_op_on_runtime(c, runtime, tmp_path):
    run_case(c, runtime, tmp_path)


def _mask_write(x):
    y = x * 1
    y[y > 0] = 0
    return y


def _repeated_write(x):
    y = x * 1
    y[:, [1, 1]] = x[:, :2]
    return y


REFUSALS = [
    Refusal("getitem_index_from_input", Fn(lambda x: x[:, (x[0, :2, 0, 0] * 0).long()]), (X,),
            r"data-dependent gather"),
    Refusal("getitem_two_lists", Fn(lambda x: x[:, [0, 1], [2, 3]]), (X,), r"more than one list/tensor index"),
    Refusal("getitem_int_apart_from_list", Fn(lambda x: x[:, 0, :, [1, 2]]), (X,),
            r"integer and list indices apart"),
    Refusal("setitem_mask_from_input", Fn(_mask_write), (X,), r"data-dependent gather"),
    Refusal("setitem_repeated_positions", Fn(_repeated_write), (X,), r"repeated positions"),
]


@pytest.mark.parametrize("r", REFUSALS, ids=ids(REFUSALS))
def test_gather_refusal(r):
    run_refusal(r)
