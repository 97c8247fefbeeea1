"""Seeded fuzzing: random byte flips, truncations, insertions and deletions of small valid files.

Every case must load or raise CheckpointError — no other exception, no crash — and no storage
may be allocated larger than the (mutated) file itself.
"""
import contextlib
import pickle
import random
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint_fixtures as fx
from tracecap import CheckpointError
from tracecap.checkpoint import legacy_pickle_format, load_checkpoint, tar_format, zip_format

SHARED = Path(__file__).resolve().parents[2] / "shared" / "legacy-checkpoints"
REAL_FILES = ("legacy_py2-torch0.4.1_list.pt", "legacy_cuda_randn2_tensor.pt")
CASES_PER_FIXTURE = 300   # 7 synthetic fixtures: 2,100 cases whatever lies beside the clone


def _fixtures():
    base = torch.arange(12.0).reshape(3, 4)
    obj = OrderedDict(w=base, row=base[1], t=base.t(), i=torch.tensor([1, -2], dtype=torch.int64),
                      h=torch.ones(2, dtype=torch.half), b=torch.tensor([True, False]), meta={"epoch": 3, "lr": 0.5})
    with _quiet():
        q = {"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 2, torch.qint8)}
        module = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
        files = {
            "tar": fx.tar_bytes(obj, views=True),
            "legacy": fx.legacy_bytes(obj, views=True),
            "legacy-v1-be": fx.legacy_bytes(obj, rebuild="v1", big_endian=True),
            "zip": fx.zip_bytes(obj),
            "torch-zip-quantized": fx.torch_zip_bytes(q),
            "plain-numpy": pickle.dumps({"a": np.arange(6.0).reshape(2, 3), "s": np.float32(2.5), "t": base},
                                        protocol=4),
            "torch-legacy-module": fx.torch_legacy_bytes(module),
        }
    return files


def _real_files():
    missing = [name for name in REAL_FILES if not (SHARED / name).is_file()]
    if missing:
        pytest.skip(f"real legacy checkpoints not found at {SHARED} ({', '.join(missing)})")
    return {name: (SHARED / name).read_bytes() for name in REAL_FILES}


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes for quantized tensors / legacy saving
        yield


def mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    b = bytearray(data)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del b[rng.randrange(len(b)):]
    elif kind == 2:  # insert random bytes
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3:  # delete a chunk
        pos = rng.randrange(len(b))
        del b[pos:pos + rng.randint(1, 32)]
    else:  # overwrite an 8-byte window with an extreme integer (length/count fields)
        pos = rng.randrange(max(1, len(b) - 8))
        b[pos:pos + 8] = rng.choice([2 ** 63 - 1, 2 ** 40, 2 ** 31, 0xFFFFFFFF, 0]).to_bytes(8, "little")
    return bytes(b)


def test_fuzz_only_checkpoint_errors(tmp_path, monkeypatch):
    total, outcomes = _fuzz(_fixtures(), tmp_path, monkeypatch, seed=20240501)
    assert total >= 2000
    assert outcomes["error"] > total // 3  # the mutations really break files ...
    assert outcomes["ok"] > 50  # ... and harmless ones (e.g. inside tensor data) still load


def test_fuzz_real_legacy_files(tmp_path, monkeypatch):
    total, outcomes = _fuzz(_real_files(), tmp_path, monkeypatch, seed=20240502)
    assert total == len(REAL_FILES) * CASES_PER_FIXTURE
    assert outcomes["error"] > total // 3


def _fuzz(files, tmp_path, monkeypatch, seed):
    """Load CASES_PER_FIXTURE mutations of each file; only CheckpointError may come out."""
    biggest = {}

    def spy(original):
        def allocate(ref, budget):
            original(ref, budget)
            biggest["n"] = max(biggest.get("n", 0), ref.data.numel())
        return allocate

    for module in (legacy_pickle_format, tar_format, zip_format):
        monkeypatch.setattr(module, "allocate", spy(module.allocate))

    rng = random.Random(seed)
    path = tmp_path / "fuzzed.pt"
    failures, outcomes = [], {"ok": 0, "error": 0}
    total = 0
    for name, data in files.items():
        for i in range(CASES_PER_FIXTURE):
            mutated = mutate(data, rng)
            path.write_bytes(mutated)
            biggest.clear()
            total += 1
            try:
                with _quiet():
                    load_checkpoint(path)
                outcomes["ok"] += 1
            except CheckpointError:
                outcomes["error"] += 1
            except Exception as exc:  # anything else is a bug
                failures.append(f"{name} case {i}: {type(exc).__name__}: {exc}"[:300])
            assert biggest.get("n", 0) <= len(mutated), f"{name} case {i} allocated more than the file size"
    assert not failures, "\n".join(failures[:20])
    return total, outcomes
