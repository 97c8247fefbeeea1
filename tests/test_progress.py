"""``progress(done_bytes, total_bytes)`` of caffe.save and load_checkpoint: monotone, ending at the total."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

import checkpoint_fixtures
import tracecap
from tracecap.checkpoint import crc, load_checkpoint, zip_format
from tracecap.errors import CheckpointError
from tracecap.mappers import caffe
from tracecap.mappers.caffe import netspec, writer
from tracecap.mappers.caffe.netspec import Layer


def check_calls(calls, total):
    assert calls, "progress was never called"
    assert all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total and all(0 <= d <= total for d in done)


def captured():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10)).eval()
    with torch.no_grad(), tracecap.capture() as cap:
        model(torch.randn(1, 3, 8, 8))
    return cap.graph


def test_caffe_save_reports_every_layer_with_blobs(tmp_path):
    graph = captured()
    calls = []
    caffe.save(graph, tmp_path / "n.prototxt", tmp_path / "n.caffemodel", progress=lambda d, t: calls.append((d, t)))
    layers = caffe.to_layers(graph, "bvlc")
    total = sum(4 * np.asarray(b).size for layer in layers for b in layer.blobs)
    check_calls(calls, total)
    assert len(calls) >= sum(1 for layer in layers if layer.blobs)


def test_caffe_save_without_progress_writes_the_same_files(tmp_path):
    graph = captured()
    caffe.save(graph, tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    caffe.save(graph, tmp_path / "b.prototxt", tmp_path / "b.caffemodel", progress=lambda d, t: None)
    for ext in ("prototxt", "caffemodel"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()


def test_a_big_blob_is_reported_in_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "_CHUNK", 4096)
    layers = [Layer("Scale", "s", ["data"], ["s"], {}, [np.ones(10_000, np.float32)])]
    net, blobs = netspec.to_net(layers, name="n", inputs={"data": (1, 10_000)}, dialect="opencv", with_blobs=False)
    calls = []
    writer.save_parts(net, blobs, tmp_path / "n.prototxt", tmp_path / "n.caffemodel",
                      progress=lambda d, t: calls.append((d, t)))
    check_calls(calls, 40_000)
    assert len(calls) >= 40_000 // 4096


def test_writer_save_of_a_net_with_blobs_and_of_one_without(tmp_path):
    full = caffe.to_net(captured(), "opencv")
    calls = []
    writer.save(full, tmp_path / "n.prototxt", tmp_path / "n.caffemodel", progress=lambda d, t: calls.append((d, t)))
    check_calls(calls, sum(4 * len(b.data) for layer in full.layer for b in layer.blobs))
    empty = netspec.to_net([Layer("ReLU", "r", ["data"], ["data"])], name="n", inputs={"data": (1, 3)},
                           dialect="opencv")
    calls = []
    writer.save(empty, tmp_path / "e.prototxt", tmp_path / "e.caffemodel", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 0)]


def state_dict():
    torch.manual_seed(0)
    return {"big": torch.randn(600_000), "small": torch.randn(7), "steps": torch.tensor(3),
            "half": torch.randn(5, 5).half()}


def test_load_checkpoint_reports_every_storage_of_a_zip_file(tmp_path):
    sd = state_dict()
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    calls = []
    loaded = load_checkpoint(path, progress=lambda d, t: calls.append((d, t)))
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    check_calls(calls, sum(t.numel() * t.element_size() for t in sd.values()))
    assert len(calls) >= len(sd)


@pytest.mark.parametrize("fast", [True, False])
def test_zip_loads_the_same_with_either_crc(tmp_path, monkeypatch, fast):
    if not fast:
        monkeypatch.setattr(crc, "FAST", False)
        monkeypatch.setattr(crc, "_fast_crc32", None)
    sd = state_dict()
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    loaded = load_checkpoint(path)
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in sd.items())


def test_load_checkpoint_reports_other_formats_once(tmp_path):
    sd = state_dict()
    del sd["half"]
    path = tmp_path / "legacy.pt"
    path.write_bytes(checkpoint_fixtures.legacy_bytes(sd))
    calls = []
    load_checkpoint(path, progress=lambda d, t: calls.append((d, t)))
    check_calls(calls, sum(t.numel() * t.element_size() for t in sd.values()))


def _corrupt_record(path, record_suffix, out):
    """A copy of zip ``path`` with one byte of the record ending in ``record_suffix`` flipped."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(record_suffix))
        name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
            int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
        start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0xFF
    out.write_bytes(bytes(data))


@pytest.mark.parametrize("fast", [True, False])   # ISA-L's CRC (when installed) and zlib's
@pytest.mark.parametrize("size", [100, 2_000_000])   # zlib: checked at once, and on the worker thread
def test_a_damaged_storage_still_fails_the_load(tmp_path, monkeypatch, size, fast):
    if fast and not crc.FAST:
        pytest.skip("the optional isal package is not installed")
    if not fast:
        monkeypatch.setattr(crc, "FAST", False)
        monkeypatch.setattr(crc, "_fast_crc32", None)
    assert (size * 4 >= zip_format._StorageCrcs.THREAD_FROM) == (size > 1000)
    path, bad = tmp_path / "ok.pt", tmp_path / "bad.pt"
    torch.save({"w": torch.randn(size)}, path)
    _corrupt_record(path, "/data/0", bad)
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        load_checkpoint(bad)


def test_the_reporter_tells_big_work_in_quarters_and_small_work_not_at_all():
    import io
    from tracecap import progress
    out = io.StringIO()
    tick = progress.reporter("writing weights", stream=out, min_total=100)
    for done in range(0, 1001, 50):
        tick(done, 1000)
    assert out.getvalue().splitlines() == [f"      writing weights: {d}/1000" for d in (250, 500, 750, 1000)]
    small = io.StringIO()
    tick = progress.reporter("writing weights", stream=small, min_total=100)
    tick(10, 99), tick(99, 99)
    assert small.getvalue() == ""
    quiet = io.StringIO()
    progress.reporter("x", quiet=True, stream=quiet)(5, 5)
    assert quiet.getvalue() == ""


def test_convert_tells_the_reading_of_a_big_checkpoint(tmp_path, capsys):
    """--weights of a file past BIG_FILE_BYTES: its reading is told on stderr; under quiet nothing is."""
    from tracecap import progress
    from tracecap.convert import load_weights
    model = torch.nn.Linear(4096, 4608, bias=False)
    assert model.weight.numel() * 4 > progress.BIG_FILE_BYTES
    path = tmp_path / "big.pth"
    torch.save(model.state_dict(), path)
    load_weights(torch.nn.Linear(4096, 4608, bias=False), path)
    lines = [l for l in capsys.readouterr().err.splitlines() if "reading big.pth" in l]
    assert lines and lines[-1] == f"      reading big.pth: {model.weight.numel() * 4}/{model.weight.numel() * 4}"
    load_weights(torch.nn.Linear(4096, 4608, bias=False), path, quiet=True)
    assert capsys.readouterr().err == ""
