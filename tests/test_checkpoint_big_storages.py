"""Big storages of a zip checkpoint: pre-mapped memory, the same values and sharing as small ones."""
from __future__ import annotations

import torch

from tracecap.checkpoint import load_checkpoint, storages


def test_big_storages_load_into_premapped_memory_and_behave_like_tensors(tmp_path, monkeypatch):
    monkeypatch.setattr(storages, "_POPULATE_FROM", 1 << 20)
    torch.manual_seed(0)
    big = torch.randn(1 << 19)   # 2 MiB: above the (lowered) pre-mapping threshold
    assert big.numel() * 4 >= storages._POPULATE_FROM
    sd = {"big": big, "tied": big, "view": big[10:20], "small": torch.randn(3)}
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    loaded = load_checkpoint(path)
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert loaded["tied"].data_ptr() == loaded["big"].data_ptr()
    assert loaded["view"].untyped_storage().data_ptr() == loaded["big"].untyped_storage().data_ptr()
    loaded["big"][11] = 42.0   # writable, and views see it
    assert loaded["view"][1] == 42.0
    assert torch.equal(loaded["big"] * 2, torch.cat([big[:11], torch.tensor([42.0]), big[12:]]) * 2)
    again = tmp_path / "again.pt"
    torch.save(loaded, again)   # tensors on the mapped memory save like any other
    assert torch.equal(torch.load(again, weights_only=True)["big"], loaded["big"])
