"""Round trips through every on-disk format: format x dtype x byte order x view layout.

Files come from the from-scratch writers in checkpoint_fixtures.py (tar, legacy v1/v2, legacy
with pickle protocol 4, zip) and from torch.save itself; values are compared with what was
written and, where today's torch can read the file, with torch.load(weights_only=False).
"""
import pickle
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch

import checkpoint_fixtures as fx
from tracecap import CheckpointError
from tracecap.checkpoint import load_checkpoint, read_checkpoint

QUANTIZED = (torch.qint8, torch.quint8, torch.qint32)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16,
          torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128, *QUANTIZED]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecation notes on quantized tensors / legacy format
        yield


def write(tmp_path, data: bytes, name="ckpt.pt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t``'s elements (quantized: the stored integers)."""
    if t.is_quantized:
        return t.int_repr().reshape(-1)
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape, strides and bits (quantized: also scale and zero point)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.stride() != b.stride():
        return False
    if a.is_quantized and a.qscheme() == torch.per_tensor_affine:
        if (a.q_scale(), a.q_zero_point()) != (b.q_scale(), b.q_zero_point()):
            return False
    return torch.equal(bits(a), bits(b))


def supported(fmt, dtype):
    if fmt == "tar":  # 0.1.x had no complex/quantized tensor classes
        return not dtype.is_complex and dtype not in QUANTIZED
    return True


CASES = [(fmt, dt, be) for fmt in fx.WRITERS for dt in DTYPES for be in (False, True) if supported(fmt, dt)]


@pytest.mark.parametrize("fmt,dtype,big_endian", CASES,
                         ids=[f"{f}-{str(d)[6:]}-{'be' if b else 'le'}" for f, d, b in CASES])
def test_round_trip(tmp_path, fmt, dtype, big_endian):
    t = fx.sample_tensor(dtype, (3, 4), seed=len(str(dtype)))
    obj = OrderedDict(w=t, row=t[1], scalar=fx.sample_tensor(dtype, (), seed=1)) if dtype not in QUANTIZED \
        else OrderedDict(w=t)
    path = write(tmp_path, fx.WRITERS[fmt](obj, big_endian=big_endian))
    ck = read_checkpoint(path)
    assert ck.info.format == ("tar" if fmt == "tar" else "zip" if fmt == "zip" else "legacy")
    assert ck.info.byteorder == ("big" if big_endian else "little")
    assert isinstance(ck.obj, OrderedDict) and list(ck.obj) == list(obj)
    for key in obj:
        assert same(ck.obj[key], obj[key]), key
        assert ck.obj[key].storage_offset() == obj[key].storage_offset()
    if not big_endian:  # today's torch reads these files; it ignores the big-endian flag of old formats
        ref = torch.load(path, weights_only=False)
        for key in obj:
            assert same(ck.obj[key], ref[key]), key


def test_big_endian_bytes_really_differ_on_disk():
    t = torch.tensor([1.0, 2.0])
    le, be = fx.legacy_bytes({"t": t}), fx.legacy_bytes({"t": t}, big_endian=True)
    assert le.endswith(b"\x00\x00\x80\x3f\x00\x00\x00\x40")
    assert be.endswith(b"\x3f\x80\x00\x00\x40\x00\x00\x00")


def _view_family():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return OrderedDict(base=base, block=base[1:3, 2:5], transposed=base.t(), row=base[2],
                       tail=base.view(-1)[20:])


VIEW_CASES = [("tar", False), ("tar", True), ("legacy", False), ("legacy", True), ("legacy_v1", False),
              ("legacy_p4", False), ("zip", False)]


@pytest.mark.parametrize("fmt,views", VIEW_CASES)
@pytest.mark.parametrize("big_endian", [False, True])
def test_views_keep_offsets_strides_and_shared_memory(tmp_path, fmt, views, big_endian):
    obj = _view_family()
    kwargs = {"views": True} if views else {}
    path = write(tmp_path, fx.WRITERS[fmt](obj, big_endian=big_endian, **kwargs))
    loaded = load_checkpoint(path)
    for key, t in obj.items():
        assert same(loaded[key], t), key
        assert loaded[key].storage_offset() == t.storage_offset(), key
    ptr = loaded["base"].untyped_storage().data_ptr()
    assert all(loaded[k].untyped_storage().data_ptr() == ptr for k in obj)
    loaded["base"][2, 3] = -1.0  # a write through one view is seen by all of them
    assert loaded["row"][3] == -1.0 and loaded["transposed"][3, 2] == -1.0 and loaded["block"][1, 1] == -1.0
    assert read_checkpoint(path).info.storages[0].numel == 24


def test_legacy_view_metadata_is_really_written():
    data = fx.legacy_bytes(_view_family(), views=True)
    assert b"view1" in data and b"view2" in data


def test_data_order_follows_the_key_list(tmp_path):
    obj = OrderedDict(a=torch.arange(3.0), b=torch.arange(5, dtype=torch.int64), c=torch.ones(2, dtype=torch.half))
    path = write(tmp_path, fx.legacy_bytes(obj, reverse_data=True))
    loaded = load_checkpoint(path)
    assert all(same(loaded[k], v) for k, v in obj.items())


def test_cuda_locations_load_on_cpu_and_are_reported(tmp_path):
    obj = {"w": torch.randn(2, 2)}
    for writer in (fx.legacy_bytes, fx.zip_bytes):
        path = write(tmp_path, writer(obj, location="cuda:1"))
        ck = read_checkpoint(path)
        assert ck.obj["w"].device.type == "cpu" and torch.equal(ck.obj["w"], obj["w"])
        assert ck.info.locations == {"cuda:1": 1}


def test_parameters_stay_parameters(tmp_path):
    p = torch.nn.Parameter(torch.randn(3))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    for fmt in ("tar", "legacy", "zip"):
        loaded = load_checkpoint(write(tmp_path, fx.WRITERS[fmt]({"p": p, "f": frozen})))
        assert isinstance(loaded["p"], torch.nn.Parameter) and loaded["p"].requires_grad
        assert torch.equal(loaded["p"].detach(), p.detach())
        assert not loaded["f"].requires_grad


def test_requires_grad_of_plain_tensors(tmp_path):
    t = torch.randn(2, requires_grad=True)
    loaded = load_checkpoint(write(tmp_path, fx.zip_bytes({"t": t, "n": torch.zeros(1)})))
    assert loaded["t"].requires_grad and not loaded["n"].requires_grad


def test_per_channel_quantized(tmp_path):
    q = torch.quantize_per_channel(torch.randn(4, 3), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.double),
                                   torch.tensor([0, 1, 2, 3]), 0, torch.qint8)
    for data in (fx.legacy_bytes({"q": q}), fx.zip_bytes({"q": q}), fx.torch_zip_bytes({"q": q})):
        loaded = load_checkpoint(write(tmp_path, data))["q"]
        assert loaded.qscheme() == torch.per_channel_affine
        assert torch.equal(loaded.int_repr(), q.int_repr())
        assert torch.equal(loaded.q_per_channel_scales(), q.q_per_channel_scales())
        assert torch.equal(loaded.q_per_channel_zero_points(), q.q_per_channel_zero_points())


PACKED = (torch.quint4x2, torch.quint2x4)  # sub-byte quantized: 2 or 4 values per stored byte
TORCH_DTYPES = DTYPES + [torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, *PACKED]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=[str(d)[6:] for d in TORCH_DTYPES])
def test_files_written_by_torch_save(tmp_path, dtype):
    """Files from today's torch.save, zip and legacy, with every dtype it can store."""
    if dtype in PACKED:
        t = torch.quantize_per_tensor(torch.rand(3, 5), 0.1, 1, dtype)
    elif dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32):
        t = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(dtype)
    else:
        t = fx.sample_tensor(dtype, (3, 4))
    obj = {"t": t, "col": t[:, 1] if dtype not in QUANTIZED + PACKED else t}
    writers = [fx.torch_zip_bytes, lambda o: fx.torch_zip_bytes(o, pickle_protocol=4)]
    if dtype in fx.STORAGE_NAMES:
        writers.append(fx.torch_legacy_bytes)
    for writer in writers:
        loaded = load_checkpoint(write(tmp_path, writer(obj)))
        for key in obj:
            assert same(loaded[key], obj[key]), (writer, key)


def test_zip_without_byteorder_record_and_other_prefix(tmp_path):
    obj = {"x": torch.arange(4.0)}
    loaded = read_checkpoint(write(tmp_path, fx.zip_bytes(obj, prefix="my.model", byteorder_record=False)))
    assert torch.equal(loaded.obj["x"], obj["x"]) and loaded.info.byteorder == "little"


def test_nested_containers_and_python_values(tmp_path):
    obj = {"epoch": 7, "lr": 0.1, "name": "résumé", "flags": (True, False, None), "big": 2 ** 70,
           "neg": -5, "blob": b"\x00\xff", "set": {1, 2}, "frozen": frozenset({"a"}), "nested": [{"t": torch.ones(1)}],
           "c": 1 + 2j}
    for writer in (fx.legacy_bytes, fx.zip_bytes, fx.torch_zip_bytes):
        loaded = load_checkpoint(write(tmp_path, writer(obj)))
        assert {k: v for k, v in loaded.items() if k != "nested"} == {k: v for k, v in obj.items() if k != "nested"}
        assert torch.equal(loaded["nested"][0]["t"], torch.ones(1))


def test_state_dict_metadata_attribute_survives(tmp_path):
    sd = torch.nn.Linear(2, 3).state_dict()
    loaded = load_checkpoint(write(tmp_path, fx.torch_zip_bytes(sd)))
    assert isinstance(loaded, OrderedDict)
    assert loaded._metadata == sd._metadata


class TestPlainPickles:
    def test_pickled_tensors_load_through_their_embedded_storages(self, tmp_path):
        base = torch.arange(6.0)
        obj = {"t": base.reshape(2, 3), "p": torch.nn.Parameter(torch.ones(2)), "half": base.half()}
        ck = read_checkpoint(write(tmp_path, pickle.dumps(obj)))
        assert ck.info.format == "pickle"
        assert torch.equal(ck.obj["t"], obj["t"]) and torch.equal(ck.obj["half"], obj["half"])
        assert isinstance(ck.obj["p"], torch.nn.Parameter)

    @pytest.mark.parametrize("protocol", [0, 2, 4, 5])
    def test_numpy_arrays_and_scalars(self, tmp_path, protocol):
        obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "be": np.arange(4, dtype=">i4"),
               "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "b": np.array([True, False]),
               "acc": np.float64(0.875), "n": np.int64(-3), "obj": np.array(["x", 1], dtype=object),
               "text": np.array(["ab", "c"])}
        loaded = load_checkpoint(write(tmp_path, pickle.dumps(obj, protocol=protocol)))
        for key, value in obj.items():
            assert type(loaded[key]) is type(value), key
            assert np.asarray(loaded[key]).dtype == np.asarray(value).dtype, key
            assert np.array_equal(loaded[key], value), key
        assert loaded["fortran"].flags.f_contiguous

    def test_trailing_garbage_is_refused(self, tmp_path):
        with pytest.raises(CheckpointError, match="unexpected bytes after the first pickle"):
            load_checkpoint(write(tmp_path, pickle.dumps({"a": 1}) + b"junk"))


def test_read_checkpoint_reports_writer_era(tmp_path):
    obj = {"x": torch.ones(2)}
    eras = {"tar": "torch 0.1.x", "legacy_v1": "torch 0.1.10 - 0.3", "legacy": "torch 0.4 - 1.5", "zip": "torch >= 1.6"}
    for fmt, era in eras.items():
        assert read_checkpoint(write(tmp_path, fx.WRITERS[fmt](obj))).info.writer.startswith(era)


def test_empty_tensors_and_zero_size_storages(tmp_path):
    obj = {"e": torch.empty(0, 3), "z": torch.zeros(0, dtype=torch.int64)}
    for fmt in ("tar", "legacy", "zip"):
        loaded = load_checkpoint(write(tmp_path, fx.WRITERS[fmt](obj)))
        assert loaded["e"].shape == (0, 3) and loaded["z"].dtype == torch.int64


def test_corrupt_bool_bytes_are_normalised(tmp_path):
    data = fx.legacy_bytes({"b": torch.tensor([True, False, True])})
    assert data.endswith(b"\x01\x00\x01")
    loaded = load_checkpoint(write(tmp_path, data[:-3] + b"\x02\x00\xff"))["b"]
    assert loaded.view(torch.uint8).tolist() == [1, 0, 1]


def test_map_location(tmp_path):
    path = write(tmp_path, fx.zip_bytes({"w": torch.ones(2)}, location="cuda:0"))
    for where in ("cpu", None, torch.device("cpu")):
        assert load_checkpoint(path, map_location=where)["w"].device.type == "cpu"
    with pytest.raises(ValueError, match="safe loading always puts tensors on the CPU"):
        load_checkpoint(path, map_location="cuda:0")
