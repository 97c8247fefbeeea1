"""The Lua Torch7 reader: synthetic files from the fixture writer, cross-checked with ``torchfile``.

Each synthetic file is read by tracecap and compared, value by value and sharing by sharing,
with the independent ``torchfile`` package's reading (big-endian, 4-byte-long and ascii files,
which torchfile does not read, are compared with torchfile's reading of their little-endian
twin).  Hostile files (truncated anywhere, absurd sizes, cycles, unknown codes, random damage)
must raise ``CheckpointError`` and nothing else.
"""
import math
import re
import struct

import numpy as np
import pytest
import torch

import torch7_fixtures as fx
from tracecap import CheckpointError, load_checkpoint
from tracecap.checkpoint import StorageRef
from tracecap.checkpoint.torch7 import LuaFunction, LuaTable, TableKey, TorchObject, load_torch7

torchfile = pytest.importorskip("torchfile", reason="torchfile (dev extra) is not installed")

DTYPES = list(fx.NAMES)


def _tensor_values(dtype, gen, n):
    if dtype.is_floating_point:
        return (torch.randn(n, generator=gen, dtype=torch.float64) * 3).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, (n,), generator=gen).to(dtype)


def typed_tensors(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    base = _tensor_values(dtype, gen, 60).reshape(3, 4, 5)
    return {"contiguous": base, "transposed": base.transpose(0, 2), "slice": base[1:, ::2, 1],
            "offset": base.reshape(-1)[7:19], "scalar_like": base[0, 0, :1], "empty": torch.zeros(0, dtype=dtype)}


def shared_references():
    table = {"x": 1}
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    st = fx.Storage(torch.arange(10, dtype=torch.float64))
    return {"a": table, "b": table, "w": w, "w_again": w, "row": w[1], "col": w[:, 2],
            "v1": st.view([2, 3], offset=1), "v2": st.view([5], [2], 0), "storage": st}


def cycles():
    outer = {"name": "outer"}
    outer["self"] = outer
    inner = [outer, {"back": outer}]
    outer["inner"] = inner
    seqm = fx.module("nn.Sequential")
    child = fx.module("nn.Identity", parent=seqm)
    seqm.fields["modules"] = [child, child]
    return {"outer": outer, "net": seqm}


def nn_tree():
    g = torch.Generator().manual_seed(3)
    conv = fx.module("nn.SpatialConvolution", nInputPlane=2, nOutputPlane=3, kW=3, kH=3, dW=1, dH=1, padW=1,
                     padH=1, weight=torch.randn(3, 2, 3, 3, generator=g), bias=torch.randn(3, generator=g))
    view = fx.module("nn.View", size=fx.Storage([-1, 12], dtype=torch.int64), numElements=12)
    return fx.module("nn.Sequential", modules=[conv, fx.module("cudnn.ReLU", inplace=True), view])


def nested(depth):
    value = "bottom"
    for i in range(depth):
        value = {"level": i, "next": value} if i % 2 else [value, i]
    return value


SYNTHETIC = {
    "numbers": ({"zero": 0, "int": 42, "neg": -7, "big": 2.0 ** 52, "float": 0.1, "tiny": 5e-324,
                 "huge": 1.7976931348623157e308, "inf": math.inf, "ninf": -math.inf}, {}),
    "strings": ({"empty": "", "ascii": "hello", "utf8": "Grüße ☃", "nul": "a\0b",
                 "binary": b"\xff\xfe\x00raw"}, {}),
    "booleans": ({"t": True, "f": False, "list": [True, False, True]}, {}),
    "top_level_nil": (None, {}),  # (Torch7 never writes nil table values: pairs() skips them)
    "top_level_number": (3.25, {}),
    "top_level_string": ("just a string", {}),
    "list_table": ([10, 20.5, "thirty", [1, 2]], {}),
    "mixed_keys": ({1: "one", 2: "two", 5: "five", 1.5: "x", "k": "v", -3: "neg"}, {}),
    "nested_tables": (nested(60), {}),
    **{f"tensors_{fx.NAMES[dt].lower()}": (typed_tensors(dt, i), {}) for i, dt in enumerate(DTYPES)},
    "storages": ({fx.NAMES[dt]: fx.Storage(_tensor_values(dt, torch.Generator().manual_seed(9), 7))
                  for dt in DTYPES}, {}),
    "cuda_tensors": ({"f": fx.CudaTensor(torch.ones(2, 3)), "l": fx.CudaTensor(torch.arange(4)),
                      "d": fx.CudaTensor(torch.zeros(3, dtype=torch.float64)),
                      "h": fx.CudaTensor(torch.ones(2, dtype=torch.float16))}, {}),
    "shared_references": (shared_references(), {}),
    "cycles": (cycles(), {}),
    "not_referenced": (shared_references(), {"referenced": False}),
    "nn_module_tree": (nn_tree(), {}),
    "function_with_upvalues": ({"f": fx.Function(upvalues=[("count", 3), ("t", {"a": 1})])}, {}),
    "unversioned_classes": (nn_tree(), {"versioned": False}),
    "big_endian_numbers": ({"a": 1.5, "b": [1, 2, 3], "s": "text"}, {"byteorder": "big"}),
    "big_endian_tensors": ({fx.NAMES[dt]: t for dt in DTYPES for t in [typed_tensors(dt, 5)["transposed"]]},
                           {"byteorder": "big"}),
    "big_endian_nn": (nn_tree(), {"byteorder": "big"}),
    "long_size_4": ({"t": typed_tensors(torch.int64, 2), "nn": nn_tree()}, {"long_size": 4}),
    "ascii_tensors": ({fx.NAMES[dt]: typed_tensors(dt, 7) for dt in DTYPES}, {"encoding": "ascii"}),
    "ascii_nn": (nn_tree(), {"encoding": "ascii"}),
    "ascii_numbers": ({"a": 0.1, "b": -2.5e-300, "c": 123456789, "inf": math.inf, "s": "two\nlines"},
                      {"encoding": "ascii"}),
}
TWIN_OPTIONS = ("byteorder", "long_size", "encoding")


def normalize(value, memo):
    """Either reader's result as comparable plain data; shared/cyclic objects become ("ref", n)."""
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return ("number", float(value))
    if isinstance(value, (str, bytes)):
        return ("string", value.encode() if isinstance(value, str) else value)
    key = id(value)
    if key in memo:
        return ("ref", memo[key])
    memo[key] = len(memo)
    if isinstance(value, fx.CudaTensor):
        value = value.tensor
    if isinstance(value, fx.Storage):
        value = value.values
    if isinstance(value, fx.TensorView):
        value = value.storage.values.as_strided(value.size, value.stride, value.offset)
    if isinstance(value, fx.Obj):
        return ("object", value.typename.encode(), normalize(value.fields, memo))
    if isinstance(value, fx.Function):
        return ("function", value.bytecode,
                normalize([{"name": n, "value": v} for n, v in value.upvalues], memo))
    if isinstance(value, StorageRef):
        value = value.tensor()
    if isinstance(value, torch.Tensor):
        value = value.reshape(1) if value.dim() == 0 else value
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str[1:], value.shape, value.tolist())
    if isinstance(value, TorchObject):
        return ("object", value.typename.encode(), normalize(value.fields, memo))
    if isinstance(value, torchfile.TorchObject):
        return ("object", value._typename, normalize(value._obj, memo))
    if isinstance(value, LuaFunction):
        return ("function", value.bytecode, normalize(value.upvalues, memo))
    if isinstance(value, torchfile.LuaFunction):
        return ("function", value.dumped, normalize(value.upvalues, memo))
    if isinstance(value, LuaTable):
        listed = value.as_list()
        if listed is not None and listed:
            return ("list", [normalize(v, memo) for v in listed])
    if isinstance(value, list):
        return ("list", [normalize(v, memo) for v in value])
    if isinstance(value, dict):
        items = [(normalize(k.value if isinstance(k, TableKey) else k, {}), normalize(v, memo))
                 for k, v in value.items()]
        return ("table", sorted(items, key=repr))
    raise TypeError(type(value))


def _torchfile_read(path):
    return torchfile.load(str(path), use_list_heuristic=True, use_int_heuristic=True)


def _torchfile_reads(value) -> bool:
    """torchfile 0.1.0 reads no half tensors (a Python 3 bug) and no CUDA type but CudaTensor."""
    memo, stack = set(), [value]
    while stack:
        v = stack.pop()
        if id(v) in memo:
            continue
        memo.add(id(v))
        if isinstance(v, fx.CudaTensor) and v.tensor.dtype != torch.float32:
            return False
        if (isinstance(v, torch.Tensor) and v.dtype == torch.float16) or \
                (isinstance(v, fx.Storage) and v.values.dtype == torch.float16):
            return False
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, fx.Obj):
            stack.extend(v.fields.values())
    return True


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_file_round_trips(tmp_path, name):
    """Our reading equals what the writer wrote, and torchfile's reading wherever torchfile reads it."""
    value, options = SYNTHETIC[name]
    path = tmp_path / f"{name}.t7"
    path.write_bytes(fx.t7_bytes(value, **options))
    ours = normalize(load_checkpoint(path), {})
    if options.get("referenced", True):
        assert ours == normalize(value, {})
    twin = {k: v for k, v in options.items() if k not in TWIN_OPTIONS}
    twin_path = tmp_path / f"{name}.le.t7"
    twin_path.write_bytes(fx.t7_bytes(value, **twin))
    if twin != options:  # the variant equals its little-endian binary twin, both read by us
        assert ours == normalize(load_checkpoint(twin_path), {})
    if _torchfile_reads(value):
        assert ours == normalize(_torchfile_read(twin_path), {})


def test_synthetic_count():
    assert len(SYNTHETIC) >= 20
    readable = [n for n, (v, _) in SYNTHETIC.items() if _torchfile_reads(v)]
    assert len(readable) >= 20, readable


class TestValues:
    def test_tensor_types_values_and_views(self):
        for dt in DTYPES:
            src = typed_tensors(dt, 11)
            got = load_torch7(fx.t7_bytes(src))
            for key, t in src.items():
                assert got[key].dtype == dt and got[key].shape == t.shape, (dt, key)
                assert torch.equal(got[key], t), (dt, key)
            assert got["transposed"].stride() == src["transposed"].stride()

    def test_shared_storage_stays_shared(self):
        got = load_torch7(fx.t7_bytes(shared_references()))
        assert got["a"] is got["b"] and got["w"] is got["w_again"]
        got["w"][1, 2] = 99.0
        assert got["row"][2] == 99.0 and got["col"][1] == 99.0
        got["storage"].tensor()[3] = -1.0
        assert got["v1"][0, 2] == -1.0 and got["v2"].tolist()[:2] == [0.0, 2.0]

    def test_not_referenced_file_copies(self):
        got = load_torch7(fx.t7_bytes(shared_references(), referenced=False))
        assert got["a"] is not got["b"] and got["a"] == got["b"]

    def test_cycles_are_the_same_objects(self):
        got = load_torch7(fx.t7_bytes(cycles()))
        outer = got["outer"]
        assert outer["self"] is outer and outer["inner"][1] is outer and outer["inner"][2]["back"] is outer
        net = got["net"]
        first, second = net.fields["modules"][1], net.fields["modules"][2]
        assert first is second and first.fields["parent"] is net

    def test_numbers_strings_booleans(self):
        got = load_torch7(fx.t7_bytes(SYNTHETIC["numbers"][0]))
        assert got["int"] == 42 and type(got["int"]) is int and got["float"] == 0.1 and got["inf"] == math.inf
        got = load_torch7(fx.t7_bytes(SYNTHETIC["strings"][0]))
        assert got["utf8"] == "Grüße ☃" and got["nul"] == "a\0b" and got["binary"] == b"\xff\xfe\x00raw"
        got = load_torch7(fx.t7_bytes({"t": True, "f": False, "n": None}))
        assert got == {"t": True, "f": False}  # a nil value is no entry, as in Lua

    def test_boolean_and_number_keys_stay_distinct(self):
        w = fx.Writer()  # the Lua table {[1] = "number", [true] = "boolean"}: two keys in Lua, one in Python
        w.ints(3), w.ints(1), w.ints(2)
        w.obj(1), w.obj("number"), w.obj(True), w.obj("boolean")
        table = load_torch7(bytes(w.out))
        assert table[1] == "number" and [v for k, v in table.items() if isinstance(k, TableKey)] == ["boolean"]

    def test_function_is_data(self):
        got = load_torch7(fx.t7_bytes({"f": fx.Function(b"\x1bLJ payload", [("n", 2)])}))["f"]
        assert isinstance(got, LuaFunction) and got.bytecode == b"\x1bLJ payload"
        assert got.upvalues.as_list()[0] == {"name": "n", "value": 2}

    def test_module_object(self):
        got = load_torch7(fx.t7_bytes(nn_tree()))
        assert isinstance(got, TorchObject) and got.typename == "nn.Sequential" and got.version == 1
        conv, relu, view = got.fields["modules"].as_list()
        assert conv.typename == "nn.SpatialConvolution" and conv.weight.shape == (3, 2, 3, 3)
        assert relu.get("inplace") is True and view["size"].tensor().tolist() == [-1, 12]

    def test_cuda_types_load_on_cpu(self, tmp_path):
        path = tmp_path / "cuda.t7"
        path.write_bytes(fx.t7_bytes({"w": fx.CudaTensor(torch.ones(2)), "h": fx.CudaTensor(torch.ones(2).half())}))
        from tracecap.checkpoint import read_checkpoint
        ck = read_checkpoint(path)
        assert ck.obj["w"].dtype == torch.float32 and ck.obj["h"].dtype == torch.float16
        assert ck.info.locations == {"cuda": 2}

    def test_trailing_bytes_are_noted(self, tmp_path):
        from tracecap.checkpoint import read_checkpoint
        path = tmp_path / "extra.t7"
        path.write_bytes(fx.t7_bytes([1, 2]) + b"junk")
        ck = read_checkpoint(path)
        assert ck.obj == {1: 1, 2: 2} and "4 bytes after the saved object" in ck.info.notes[0]

    def test_deep_nesting_reads_without_recursion(self):
        depth = 50_000  # {[1] = {[1] = ... "bottom" ...}}, far beyond Python's recursion limit
        data = b"".join(struct.pack("<iii", 3, i + 1, 1) + struct.pack("<id", 1, 1.0) for i in range(depth))
        got = load_torch7(data + struct.pack("<ii", 2, 6) + b"bottom")
        for _ in range(depth):
            got = got[1]
        assert got == "bottom"


class TestDetection:
    def test_detected_by_content_not_extension(self, tmp_path):
        path = tmp_path / "model.pth"
        path.write_bytes(fx.t7_bytes(nn_tree(), byteorder="big"))
        assert isinstance(load_checkpoint(path), TorchObject)

    def test_pytorch_pickle_named_t7_is_still_pytorch(self, tmp_path):
        path = tmp_path / "ckpt.t7"
        torch.save({"w": torch.ones(2)}, path)
        assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))

    def test_real_t7_named_pytorch_files(self):
        import glob
        import os
        files = glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "legacy-checkpoints", "*.t7"))
        if not files:
            pytest.skip("../shared/legacy-checkpoints is absent")
        from tracecap.checkpoint import read_checkpoint
        for f in files:
            assert read_checkpoint(f).info.format in ("legacy", "zip"), f

    def test_inspect_shows_the_module_tree(self, tmp_path, capsys):
        from tracecap import cli
        path = tmp_path / "net.t7"
        path.write_bytes(fx.t7_bytes(nn_tree()))
        assert cli.main(["inspect", str(path)]) == 0
        out = capsys.readouterr().out
        assert "Lua Torch7 serialization (binary)" in out
        assert "(1) nn.SpatialConvolution(nInputPlane=2, nOutputPlane=3, kW=3, kH=3" in out
        assert "weight: float32 [3, 2, 3, 3]" in out and "(3) nn.View(size=[-1, 12], numElements=12)" in out
        assert re.search(r"modules\.1\.weight\s+float32\s+3x2x3x3", out) and "total parameters: 57" in out


# -- hostile files -------------------------------------------------------------------------------
def _small_file(**options):
    return fx.t7_bytes({"net": nn_tree(), "s": "string", "n": [1.5, True], "t": torch.arange(3)}, **options)


def _header(typename, version=True):
    w = fx.Writer()
    w.ints(4), w.ints(1)
    if version:
        w.chars(b"V 1")
    w.chars(typename.encode())
    return w


def _patched(data, old: bytes, new: bytes):
    assert data.count(old) >= 1
    return data.replace(old, new, 1)


class TestHostile:
    @pytest.mark.parametrize("byteorder", ["little", "big"])
    def test_truncated_at_every_offset(self, byteorder):
        data = _small_file(byteorder=byteorder)
        for cut in range(len(data)):
            with pytest.raises(CheckpointError):
                load_torch7(data[:cut])
        assert len(data) > 2000

    def test_truncated_ascii_is_refused_or_reads_a_shorter_number(self):
        data = _small_file(encoding="ascii")  # "1.5" cut to "1." is still a number, for Torch7 too
        refused = 0
        for cut in range(len(data)):
            try:
                load_torch7(data[:cut])
            except CheckpointError:
                refused += 1
        assert refused >= len(data) - 8

    @pytest.mark.parametrize("case", ["string_length", "negative_string", "table_pairs", "negative_pairs",
                                      "storage_count", "negative_storage", "ndim", "negative_ndim",
                                      "size_beyond_storage", "negative_stride", "repeat_bomb", "offset_zero"])
    def test_absurd_sizes(self, case):
        w = fx.Writer()
        if case in ("string_length", "negative_string"):
            w.ints(2), w.ints(2 ** 31 - 1 if case == "string_length" else -5)
            w.out += b"abc"
        elif case in ("table_pairs", "negative_pairs"):
            w.ints(3), w.ints(1), w.ints(2 ** 31 - 1 if case == "table_pairs" else -1)
        elif case in ("storage_count", "negative_storage"):
            w = _header("torch.FloatStorage")
            w.longs(2 ** 62 if case == "storage_count" else -3)
            w.out += b"\0" * 16
        else:
            w = _header("torch.FloatTensor")
            sizes, strides, offset = {"ndim": ([1] * 100, [1] * 100, 1), "negative_ndim": ([], [], 1),
                                      "size_beyond_storage": ([4, 4], [4, 1], 1),
                                      "negative_stride": ([2], [-1], 2),
                                      "repeat_bomb": ([2 ** 20, 2 ** 20], [0, 0], 1),
                                      "offset_zero": ([2], [1], 0)}[case]
            if case == "ndim":
                w.ints(10 ** 6)
            elif case == "negative_ndim":
                w.ints(-2)
            else:
                w.ints(len(sizes)), w.longs(*sizes), w.longs(*strides), w.longs(offset)
                w.obj(fx.Storage(torch.ones(4)))
        with pytest.raises(CheckpointError, match="Lua Torch7 file"):
            load_torch7(bytes(w.out))

    def test_deeper_than_the_limit(self):
        depth = 120_000
        data = b"".join(struct.pack("<iii", 3, i + 1, 1) + struct.pack("<id", 1, 1.0) for i in range(depth))
        with pytest.raises(CheckpointError, match="nested more than 100000 deep"):
            load_torch7(data + struct.pack("<i", 0))

    def test_unknown_type_codes(self):
        for code in (9, 255, 2 ** 31 - 1, -1):
            with pytest.raises(CheckpointError, match="unknown type code"):
                load_torch7(struct.pack("<iii", 3, 1, 1) + struct.pack("<id", 1, 1.0) + struct.pack("<i", code)
                            + b"\0" * 8)

    def test_unknown_and_custom_classes(self):
        w = _header("tds.Hash")
        w.longs(0)
        with pytest.raises(CheckpointError, match="tds.Hash objects use their own serialization"):
            load_torch7(bytes(w.out))
        w = _header("", version=False)
        with pytest.raises(CheckpointError, match="unknown Torch class"):
            load_torch7(bytes(w.out) + b"\0" * 8)

    def test_cycle_through_a_tensor_is_refused(self):
        w = _header("torch.FloatTensor")
        w.ints(1), w.longs(1), w.longs(1), w.longs(1)
        w.ints(4), w.ints(1)  # the storage slot names the tensor itself (index 1)
        with pytest.raises(CheckpointError, match="refers to a tensor that is still being read"):
            load_torch7(bytes(w.out))

    def test_wrong_storage_type(self):
        data = fx.t7_bytes(torch.ones(2))
        with pytest.raises(CheckpointError, match="needs a storage of torch.float32"):
            load_torch7(_patched(data, b"torch.FloatStorage", b"torch.ShortStorage"))

    def test_fields_not_a_table(self):
        w = _header("nn.Linear")
        w.obj(3.0)
        with pytest.raises(CheckpointError, match="the fields of nn.Linear are a int, not a table"):
            load_torch7(bytes(w.out))

    @pytest.mark.parametrize("key", [None, math.nan])
    def test_nil_and_nan_keys(self, key):
        w = fx.Writer()
        w.ints(3), w.ints(1), w.ints(1)
        w.obj(key), w.obj(1)
        with pytest.raises(CheckpointError, match="table key is (nil|NaN)"):
            load_torch7(bytes(w.out))

    def test_random_damage_raises_only_checkpoint_errors(self):
        data = bytearray(_small_file())
        rng = np.random.default_rng(0)
        outcomes = {"ok": 0, "refused": 0}
        for _ in range(400):
            damaged = bytearray(data)
            for pos in rng.integers(0, len(data), 3):
                damaged[pos] = int(rng.integers(0, 256))
            try:
                load_torch7(bytes(damaged))
                outcomes["ok"] += 1
            except CheckpointError:
                outcomes["refused"] += 1
        assert outcomes["refused"] > 100
