"""The restricted pickle machine: every opcode, every protocol, Python 2 strings, identity."""
import collections
import datetime
import pickle
import pickletools
import struct

import pytest
import torch

import checkpoint_fixtures as fx
from tracecap import CheckpointError
from tracecap.checkpoint import ClassRef, Opaque, load_checkpoint, read_checkpoint
from tracecap.checkpoint.placeholders import Pending
from tracecap.checkpoint.policy import CheckpointPolicy
from tracecap.checkpoint.source import Region
from tracecap.checkpoint.unpickler import RestrictedUnpickler, _build_table


def loads(data: bytes):
    return RestrictedUnpickler(Region.of_bytes(data), CheckpointPolicy()).load()


def write(tmp_path, data):
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    return path


def rich_object():
    shared = [1, 2]
    return {
        "bytes": b"\x00\xffab", "bytearray": bytearray(b"xy"), "set": {1, 2}, "frozenset": frozenset({3}),
        "complex": 1 - 2j, "big": -2 ** 100, "float": -1.5e300, "text": "ünï€😀", "tuple": (1, (2,)),
        "none": None, "bools": [True, False], "od": collections.OrderedDict(a=1),
        "counter": collections.Counter("aab"), "dd": collections.defaultdict(list, {"k": [1]}),
        "datetime": datetime.datetime(2020, 1, 2, 3, 4, 5, 6), "delta": datetime.timedelta(days=2),
        "shared": (shared, shared), "slice": slice(1, 5, 2), "empty": ((), [], {}, ""),
    }


def test_every_pickle_opcode_has_a_handler():
    table = _build_table(RestrictedUnpickler(Region.of_bytes(b"."), CheckpointPolicy()))
    missing = [op.name for op in pickletools.opcodes if table[ord(op.code)] is None]
    assert not missing
    assert sum(h is not None for h in table) == len(pickletools.opcodes)


@pytest.mark.parametrize("protocol", range(6))
def test_python_values_in_every_protocol(protocol):
    obj = rich_object()
    out = loads(pickle.dumps(obj, protocol=protocol))
    assert out == obj
    assert out["shared"][0] is out["shared"][1]  # memo keeps identity
    assert out["dd"].default_factory is list and type(out["counter"]) is collections.Counter
    assert type(out["od"]) is collections.OrderedDict


@pytest.mark.parametrize("protocol", range(6))
def test_recursive_structures(protocol):
    rec = []
    rec.append(rec)
    out = loads(pickle.dumps(rec, protocol=protocol))
    assert out[0] is out


class TestPython2Strings:
    def test_utf8_py2_str_becomes_text(self):
        raw = "żółw".encode()
        assert loads(b"\x80\x02U" + bytes([len(raw)]) + raw + b".") == "żółw"

    def test_binary_py2_str_stays_bytes(self):
        assert loads(b"\x80\x02T\x03\x00\x00\x00\xff\xfe\x00.") == b"\xff\xfe\x00"

    def test_protocol0_string_literal_with_escapes(self):
        assert loads(b"S'a\\nb\\x00'\np0\n.") == "a\nb\x00"

    def test_py2_module_names(self):
        data = b"c__builtin__\nset\n((lp0\nI1\naI2\natp1\nRp2\n."
        assert loads(data) == {1, 2}
        assert isinstance(loads(pickle.dumps(collections.UserDict(), protocol=2)), Opaque)  # UserDict.IterableUserDict

    def test_copy_reg_reconstructor_for_old_style_objects(self):
        data = b"ccopy_reg\n_reconstructor\n(cmymod\nThing\nc__builtin__\nobject\nNtR(dS'x'\nI3\nsb."
        obj = loads(data)
        assert isinstance(obj, Opaque) and obj.class_path == "mymod.Thing" and obj.x == 3

    def test_numpy_array_from_python2_data(self, tmp_path):
        """Python 2 pickled raw array bytes as str; valid UTF-8 decoding must round-trip exactly."""
        np = pytest.importorskip("numpy")
        body = struct.pack("<2f", 1.0, 2.0)  # b"\x00\x00\x80?\x00\x00\x00@" is valid ASCII
        data = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
                b"(K\x01K\x02\x85cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff"
                b"\xff\xff\xffK\x00tb\x89U\x08" + body + b"tb.")
        arr = load_checkpoint(write(tmp_path, data))
        assert arr.dtype == np.float32 and arr.tolist() == [1.0, 2.0]


class TestPlaceholders:
    def test_unknown_class_instance_keeps_args_state_and_items(self):
        data = pickle.dumps(collections.UserDict({"a": 1}), protocol=4)  # a class outside the allow-list
        obj = loads(data)
        assert isinstance(obj, Opaque) and obj.class_path == "collections.UserDict"
        assert obj.data == {"a": 1}

    def test_dict_subclass_items_are_kept(self):
        data = b"\x80\x02cmymod\nMyDict\n)\x81(X\x01\x00\x00\x00aK\x01u}X\x01\x00\x00\x00zK\x09sb."
        obj = loads(data)
        assert obj.items == {"a": 1} and obj.z == 9 and obj["a"] == 1

    def test_class_reference_as_a_value(self):
        ref = loads(b"\x80\x02cmymod\nHelper\n.")
        assert isinstance(ref, ClassRef) and ref.path == "mymod.Helper" and repr(ref) == "<mymod.Helper (not imported)>"

    def test_unknown_globals_are_reported(self, tmp_path):
        info = read_checkpoint(write(tmp_path, b"\x80\x02cmymod\nHelper\n.")).info
        assert info.classes == ["mymod.Helper"]

    def test_attribute_access_falls_through_to_state_only(self):
        obj = loads(b"\x80\x02cmymod\nThing\n)\x81}X\x02\x00\x00\x00lrG?\xb9\x99\x99\x99\x99\x99\x9asb.")
        assert obj.lr == 0.1
        with pytest.raises(AttributeError, match="no pickled attribute 'momentum'"):
            obj.momentum

    def test_pending_values_left_unbuilt_are_inert(self):
        assert "unfinished" in repr(Pending("numpy.ndarray", lambda s, h: None))


class TestMalformed:
    @pytest.mark.parametrize("data,message", [
        (b"\x80\x02", "truncated"),
        (b"\x80\x02N", "truncated"),
        (b"\x80\x06N.", "unsupported pickle protocol 6"),
        (b"\x80\x02\xff.", "invalid pickle opcode 0xff"),
        (b"\x80\x02h\x05.", "memo slot 5 that was never written"),
        (b"\x80\x02t.", "MARK that was never set"),
        (b"\x80\x02(K\x01d.", "DICT with an odd number of items"),
        (b"\x80\x02K\x01K\x02a.", "APPEND applied to int"),
        (b"\x80\x02}]K\x01s.", "malformed pickle"),  # unhashable key
        (b"\x80\x02cmymod\nThing\nK\x01R.", "call arguments must be a tuple"),
        (b"\x80\x02c1bad\nname\n.", "malformed global"),
        (b"\x80\x02Q.", "malformed pickle"),
        (b"\x80\x02X\x01\x00\x00\x00aQ.", "plain pickle must not contain persistent ids"),
        (b"S'unterminated\n.", "not quoted"),
        (b"I12", "unterminated text line"),
    ])
    def test_clear_errors(self, data, message):
        with pytest.raises(CheckpointError, match=message):
            loads(data)

    def test_build_on_non_object_is_refused(self):
        with pytest.raises(CheckpointError, match="sets state on a int"):
            loads(b"\x80\x02K\x01}b.")


def test_one_tensor_saved_twice_is_one_object(tmp_path):
    t = torch.arange(3.0)
    for data in (fx.legacy_bytes({"a": t, "b": t}), fx.torch_zip_bytes({"a": t, "b": t})):
        loaded = load_checkpoint(write(tmp_path, data))
        assert loaded["a"] is loaded["b"]


def test_allow_listed_torch_values(tmp_path):
    obj = {"dtype": torch.float16, "size": torch.Size([2, 3]), "device": torch.device("cuda", 1),
           "layout": torch.sparse_coo, "qscheme": torch.per_channel_affine}
    assert load_checkpoint(write(tmp_path, fx.torch_zip_bytes(obj))) == obj


@pytest.mark.filterwarnings("ignore")
def test_sparse_tensors(tmp_path):
    coo = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.tensor([3.0, 4.0]), (2, 2))
    csr = torch.eye(3).to_sparse_csr()
    loaded = load_checkpoint(write(tmp_path, fx.torch_zip_bytes({"coo": coo, "csr": csr})))
    assert torch.equal(loaded["coo"].to_dense(), coo.to_dense())
    assert loaded["csr"].layout == torch.sparse_csr and torch.equal(loaded["csr"].to_dense(), torch.eye(3))


@pytest.mark.filterwarnings("ignore")
def test_sparse_indices_out_of_range_are_refused(tmp_path):
    coo = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.tensor([1.0, 2.0]), (2,))
    data = fx.torch_zip_bytes({"coo": coo})
    forged = data.replace(b"K\x02\x85", b"K\x01\x85", 1)  # declared size (2,) -> (1,): index 1 out of range
    assert forged != data
    with pytest.raises(CheckpointError):
        load_checkpoint(write(tmp_path, forged))
