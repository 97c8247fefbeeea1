"""Hostile and broken inputs: each is a clear CheckpointError, nothing from the file runs.

Code-execution payloads are checked to be live (plain ``pickle.loads`` in a subprocess does run
them) before asserting that tracecap refuses them without running anything.
"""
import gzip
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import numpy as np
import pytest
import torch

import checkpoint_fixtures as fx
from tracecap import CheckpointError
from tracecap.checkpoint import Opaque, TrustWarning, load_checkpoint


def write(tmp_path, data, name="ckpt.pt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def global_call(module: str, name: str, arg="x") -> bytes:
    """Protocol 2 pickle: GLOBAL module.name, called with one text argument (REDUCE)."""
    text = arg.encode()
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + struct.pack("<I", len(text)) + text + b"\x85R.")


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _pickle_loads_in_subprocess(path, cwd):
    code = f"import pickle; pickle.loads(open({str(path)!r}, 'rb').read())"
    subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, timeout=60)


WRAPPERS = {
    "plain pickle": lambda p: p,
    "legacy": fx.legacy_from_parts,
    "zip": lambda p: fx.zip_from_records({"archive/data.pkl": p, "archive/version": b"3\n"}),
    "tar": fx.tar_from_pickle,
}


class TestCodeExecution:
    def test_payload_is_live_for_plain_pickle(self, tmp_path):
        canary = tmp_path / "canary"
        path = write(tmp_path, pickle.dumps({"w": _System(f"touch {canary}")}, protocol=2), "evil.pkl")
        _pickle_loads_in_subprocess(path, tmp_path)
        assert canary.exists()  # the payload really runs when unpickled the usual way

    @pytest.mark.parametrize("fmt", list(WRAPPERS))
    def test_os_system_is_refused_and_not_run(self, tmp_path, fmt):
        canary = tmp_path / "canary"
        payload = pickle.dumps({"w": _System(f"touch {canary}")}, protocol=2)
        assert b"system" in payload
        path = write(tmp_path, WRAPPERS[fmt](payload))
        with pytest.raises(CheckpointError, match=r"refusing to load: the pickle refers to (posix|nt|os)\.system"):
            load_checkpoint(path)
        assert not canary.exists()

    @pytest.mark.parametrize("module,name", [
        ("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "Popen"),
        ("subprocess", "check_output"), ("builtins", "eval"), ("builtins", "exec"), ("__builtin__", "eval"),
        ("builtins", "getattr"), ("builtins", "__import__"), ("builtins", "open"), ("os", "popen"),
        ("functools", "partial"), ("operator", "attrgetter"), ("importlib", "import_module"),
        ("torch.serialization", "load"), ("torch.hub", "load"), ("shutil", "rmtree"), ("socket", "socket"),
        ("pickle", "loads"), ("runpy", "run_path"), ("sys", "exit")])
    def test_dangerous_globals_are_refused_by_name(self, tmp_path, module, name):
        path = write(tmp_path, global_call(module, name))
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        shown = "builtins" if module == "__builtin__" else module
        assert f"{shown}.{name}" in str(err.value) and "Nothing from the file was executed" in str(err.value)

    def test_unknown_classes_are_never_imported(self, tmp_path, monkeypatch):
        canary = tmp_path / "imported"
        (tmp_path / "tracecap_canary_mod.py").write_text(textwrap.dedent(f"""
            open({str(canary)!r}, "w").close()
            class Thing:
                pass
            def helper(x):
                open({str(canary)!r} + "-called", "w").close()
        """))
        monkeypatch.syspath_prepend(str(tmp_path))
        data = (b"\x80\x02}(X\x05\x00\x00\x00thingctracecap_canary_mod\nThing\n)\x81}X\x01\x00\x00\x00aK\x07sb"
                b"X\x06\x00\x00\x00helper" + global_call("tracecap_canary_mod", "helper")[2:-1] + b"u.")
        path = write(tmp_path, data, "foreign.pkl")
        _pickle_loads_in_subprocess(path, tmp_path)
        assert canary.exists() and (tmp_path / "imported-called").exists()  # live payload
        canary.unlink()
        (tmp_path / "imported-called").unlink()

        obj = load_checkpoint(path)
        assert isinstance(obj["thing"], Opaque) and obj["thing"].class_path == "tracecap_canary_mod.Thing"
        assert obj["thing"].a == 7
        assert isinstance(obj["helper"], Opaque) and obj["helper"].args == ("x",)
        assert not canary.exists() and not (tmp_path / "imported-called").exists()
        assert "tracecap_canary_mod" not in sys.modules

    def test_extension_registry_and_out_of_band_buffers_refused(self, tmp_path):
        for data, text in ((b"\x80\x02\x82\x01.", "extension registry"), (b"\x80\x05\x97.", "out-of-band")):
            with pytest.raises(CheckpointError, match=text):
                load_checkpoint(write(tmp_path, data))

    def test_calling_a_non_callable_is_refused(self, tmp_path):
        with pytest.raises(CheckpointError, match="tries to call"):
            load_checkpoint(write(tmp_path, b"\x80\x02ctorch\nfloat32\n)R."))

    def test_allowed_builtins_refuse_allocating_arguments(self, tmp_path):
        huge = b"\x80\x02cbuiltins\nbytearray\n\x8a\x05\x00\x00\x00\x00\x01\x85R."  # bytearray(2**32)
        with pytest.raises(CheckpointError, match="bytearray expects bytes"):
            load_checkpoint(write(tmp_path, huge))

    def test_trust_true_warns_loudly_and_delegates_to_torch(self, tmp_path):
        path = write(tmp_path, fx.torch_zip_bytes({"w": torch.arange(3.0)}))
        with pytest.warns(TrustWarning, match="IMPORTS AND RUNS CODE"):
            obj = load_checkpoint(path, trust=True)
        assert torch.equal(obj["w"], torch.arange(3.0))


def _fixture_files():
    obj = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3, dtype=torch.int64), "e": 3}
    return {"tar": fx.tar_bytes(obj), "legacy": fx.legacy_bytes(obj), "zip": fx.zip_bytes(obj),
            "torch-zip": fx.torch_zip_bytes(obj), "plain": pickle.dumps(obj)}


def _payload_end(fmt, data):
    """Cutting at or after this offset may leave a valid file (tar padding)."""
    if fmt != "tar":
        return len(data)
    import io
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return max(m.offset_data + m.size for m in tar.getmembers())


class TestDamagedFiles:
    @pytest.mark.parametrize("fmt", ["tar", "legacy", "zip", "torch-zip", "plain"])
    def test_every_truncation_is_a_checkpoint_error(self, tmp_path, fmt):
        data = _fixture_files()[fmt]
        end = _payload_end(fmt, data)
        cuts = sorted(set(range(0, end, max(1, end // 150))) | {end - 1, end - 8, 1, 512})
        for cut in cuts:
            if 0 <= cut < end:
                with pytest.raises(CheckpointError):
                    load_checkpoint(write(tmp_path, data[:cut]))

    def test_empty_file(self, tmp_path):
        with pytest.raises(CheckpointError, match="is empty"):
            load_checkpoint(write(tmp_path, b""))

    def test_wrong_magic_number(self, tmp_path):
        data = fx.legacy_bytes({"w": torch.ones(2)})
        bad = data.replace(fx.MAGIC.to_bytes(10, "little"), (fx.MAGIC + 1).to_bytes(10, "little"), 1)
        with pytest.raises(CheckpointError, match="wrong magic number 0x1950a86a20f9469cfc6d"):
            load_checkpoint(write(tmp_path, bad))

    def test_wrong_legacy_protocol_version(self, tmp_path):
        data = fx.legacy_from_parts(pickle.dumps({"a": 1}, protocol=2), version=1002)
        with pytest.raises(CheckpointError, match="legacy protocol version 1002 is not supported"):
            load_checkpoint(write(tmp_path, data))

    def test_malformed_sys_info(self, tmp_path):
        data = fx.legacy_from_parts(pickle.dumps({"a": 1}, protocol=2), sys_info={"little_endian": "yes"})
        with pytest.raises(CheckpointError, match="sys_info record is malformed"):
            load_checkpoint(write(tmp_path, data))

    @pytest.mark.parametrize("data,message", [
        (b"hello world, not a checkpoint\n", "unknown format"),
        (gzip.compress(b"x" * 100), "gzip-compressed"),
        (b"\x04\x00\x00\x00\x01\x00\x00\x00" + b"\x00" * 64, "Lua Torch7"),
        (bytes(np.random.default_rng(0).integers(128, 256, 300, dtype=np.uint8)), "unknown format"),
    ])
    def test_not_a_checkpoint(self, tmp_path, data, message):
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(write(tmp_path, data))

    def test_missing_file_and_directory(self, tmp_path):
        with pytest.raises(CheckpointError, match="no such file"):
            load_checkpoint(tmp_path / "nope.pt")
        with pytest.raises(CheckpointError, match="is a directory"):
            load_checkpoint(tmp_path)

    def test_deeply_nested_pickle_does_not_crash(self, tmp_path):
        depth = 200_000
        data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
        obj = load_checkpoint(write(tmp_path, data))
        for _ in range(1000):
            assert type(obj) is list
            obj = obj[0]


class TestAbsurdSizes:
    """Size claims are checked against the bytes the file has before anything is allocated."""

    @pytest.mark.parametrize("writer", [fx.legacy_bytes, fx.tar_bytes])
    @pytest.mark.parametrize("claim", [2 ** 40, 2 ** 62, 10_000])
    def test_storage_element_count(self, tmp_path, writer, claim):
        path = write(tmp_path, writer({"w": torch.ones(6)}, claim=claim))
        with pytest.raises(CheckpointError, match=rf"claims {claim} elements of torch.float32 \({claim * 4} bytes\)"):
            load_checkpoint(path)

    def test_zip_storage_claim_must_match_its_record(self, tmp_path):
        path = write(tmp_path, fx.zip_bytes({"w": torch.ones(6)}, claim=2 ** 40))
        with pytest.raises(CheckpointError, match=r"claims 4398046511104 bytes .* but its record holds 24"):
            load_checkpoint(path)

    def test_negative_storage_count(self, tmp_path):
        path = write(tmp_path, fx.legacy_bytes({"w": torch.ones(6)}, claim=-1))
        with pytest.raises(CheckpointError, match="invalid element count -1"):
            load_checkpoint(path)

    @pytest.mark.parametrize("offset,size,stride,message", [
        (0, (10 ** 6,), (1,), "reaches element 1000000, beyond its storage of 6"),
        (5, (2,), (1,), "reaches element 7"),
        (0, (2, 3), (3, 2**40), "beyond its storage"),
        (-1, (2,), (1,), "invalid storage offset -1"),
        (0, (2,), (-1,), "negative size or stride"),
        (0, (2, 2), (1,), "2 sizes but 1 strides"),
        (0, "abc", (1,), "must be a tuple of ints"),
    ])
    @pytest.mark.parametrize("writer", [fx.legacy_bytes, fx.zip_bytes])
    def test_tensor_views_must_stay_inside_their_storage(self, tmp_path, writer, offset, size, stride, message):
        path = write(tmp_path, writer({"w": fx.RawTensor(torch.ones(6), offset, size, stride)}))
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_checkpoint(path)

    @pytest.mark.parametrize("opcode", [b"\x8e", b"\x8d", b"\x96"])  # BINBYTES8, BINUNICODE8, BYTEARRAY8
    def test_huge_pickle_lengths(self, tmp_path, opcode):
        data = b"\x80\x05" + opcode + struct.pack("<Q", 2 ** 60) + b"abc."
        with pytest.raises(CheckpointError, match=r"truncated: needs 1152921504606846976 bytes"):
            load_checkpoint(write(tmp_path, data))

    def test_huge_frame_and_long4(self, tmp_path):
        with pytest.raises(CheckpointError, match="pickle frame of"):
            load_checkpoint(write(tmp_path, b"\x80\x04\x95" + struct.pack("<Q", 2 ** 50) + b"N."))
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(write(tmp_path, b"\x80\x02\x8b" + struct.pack("<i", 2 ** 31 - 1) + b"\x01."))

    def test_numpy_array_claiming_more_than_its_data(self, tmp_path):
        arr = pickle.dumps(np.zeros(4, dtype=np.float32), protocol=2)
        forged = arr.replace(b"K\x04\x85", b"J\x00\xca\x9a\x3b\x85", 1)  # shape (4,) -> (10**9,)
        assert forged != arr
        with pytest.raises(CheckpointError, match="numpy array of shape .1000000000. and dtype float32 needs"):
            load_checkpoint(write(tmp_path, forged))


class TestArchives:
    def _members(self):
        empty = pickle.dumps(0, protocol=2)
        return [("sys_info", pickle.dumps({"protocol_version": 1000, "little_endian": True,
                                           "type_sizes": {}}, protocol=2)),
                ("pickle", pickle.dumps({"a": 1}, protocol=2)), ("tensors", empty),
                ("storages", empty + pickle.dumps([], protocol=2))]

    def test_minimal_tar_loads(self, tmp_path):
        assert load_checkpoint(write(tmp_path, fx.tar_of(self._members()))) == {"a": 1}

    @pytest.mark.parametrize("evil", ["../pickle", "../../etc/passwd", "/etc/passwd", "a/../../x"])
    def test_tar_members_escaping_the_archive(self, tmp_path, evil):
        members = self._members() + [(evil, b"owned")]
        with pytest.raises(CheckpointError, match="points outside the archive"):
            load_checkpoint(write(tmp_path, fx.tar_of(members)))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # nothing extracted anywhere

    @pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
    def test_tar_links_and_devices(self, tmp_path, kind):
        data = fx.tar_of(self._members(), kinds={"pickle": kind})
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_checkpoint(write(tmp_path, data))

    def test_tar_unexpected_and_missing_members(self, tmp_path):
        with pytest.raises(CheckpointError, match="unexpected tar member 'extra'"):
            load_checkpoint(write(tmp_path, fx.tar_of(self._members() + [("extra", b"")])))
        with pytest.raises(CheckpointError, match="lacks member.s. tensors"):
            load_checkpoint(write(tmp_path, fx.tar_of([m for m in self._members() if m[0] != "tensors"])))

    def test_corrupted_zip_central_directory(self, tmp_path):
        data = fx.zip_bytes({"w": torch.ones(3)})
        central = data.rindex(b"PK\x01\x02")
        broken = data[:central] + b"XX\x01\x02" + data[central + 4:]
        with pytest.raises(CheckpointError, match="damaged zip archive"):
            load_checkpoint(write(tmp_path, broken))

    def test_zip_directory_offset_beyond_file(self, tmp_path):
        data = bytearray(fx.zip_bytes({"w": torch.ones(3)}))
        eocd = data.rindex(b"PK\x05\x06")
        data[eocd + 16:eocd + 20] = struct.pack("<I", 2 ** 31)
        with pytest.raises(CheckpointError, match="damaged zip archive"):
            load_checkpoint(write(tmp_path, bytes(data)))

    def test_zip_record_crc_mismatch(self, tmp_path):
        data = bytearray(fx.zip_bytes({"w": torch.arange(4.0)}))
        pos = data.index(struct.pack("<4f", 0, 1, 2, 3))
        data[pos + 5] ^= 0xFF
        with pytest.raises(CheckpointError, match=r"record 'archive/data/0' is damaged \(CRC mismatch\)"):
            load_checkpoint(write(tmp_path, bytes(data)))

    def test_zip_compressed_record(self, tmp_path):
        data = fx.zip_from_records({"archive/data.pkl": pickle.dumps(1)}, compression=zipfile.ZIP_DEFLATED)
        with pytest.raises(CheckpointError, match="is compressed"):
            load_checkpoint(write(tmp_path, data))

    def test_zip_without_data_pkl_and_torchscript(self, tmp_path):
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            load_checkpoint(write(tmp_path, fx.zip_from_records({"readme.txt": b"hi"})))
        script = fx.zip_from_records({"m/data.pkl": b"", "m/constants.pkl": b"", "m/code/m.py": b""})
        with pytest.raises(CheckpointError, match=r"m/data\.pkl"):   # TorchScript is read; an empty data.pkl is not
            load_checkpoint(write(tmp_path, script))

    def test_zip_bad_byteorder(self, tmp_path):
        data = fx.zip_from_records({"archive/data.pkl": pickle.dumps(1, protocol=2), "archive/byteorder": b"middle"})
        with pytest.raises(CheckpointError, match="byteorder record says 'middle'"):
            load_checkpoint(write(tmp_path, data))
