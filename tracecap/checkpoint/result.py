"""What a read returns besides the object: facts about the file, for reports and ``inspect``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FORMAT_NAMES = {
    "tar": "tar (torch <= 0.1.9)",
    "legacy": "legacy pickle (torch 0.1.10 - 1.5)",
    "zip": "zip (torch >= 1.6)",
    "pickle": "plain pickle (not written by torch.save)",
    "torchscript": "TorchScript archive (torch.jit.save), read as data",
}


@dataclass
class CheckpointInfo:
    """Facts gathered while reading one checkpoint file."""

    path: str
    format: str  # "tar" | "legacy" | "zip" | "pickle"
    file_size: int
    byteorder: str = "little"
    format_version: Any = None  # tar/legacy protocol_version (1000/1001), zip "version" record
    sys_info: dict | None = None
    records: dict = field(default_factory=dict)  # zip: small metadata records (name -> text)
    storages: list = field(default_factory=list)  # StorageRef, in file order
    classes: list = field(default_factory=list)  # globals named by the file and not imported
    module_sources: dict = field(default_factory=dict)  # class path -> source file recorded in the file
    rebuilders: list = field(default_factory=list)  # allow-listed callables the file used
    python2: bool = False
    notes: list = field(default_factory=list)

    @property
    def format_name(self) -> str:
        return FORMAT_NAMES.get(self.format, self.format)

    @property
    def locations(self) -> dict:
        """Saved device of the storages, e.g. {"cuda:0": 10}; all of them are loaded on the CPU."""
        out = {}
        for s in self.storages:
            if s.root is None:
                out[str(s.location)] = out.get(str(s.location), 0) + 1
        return out

    @property
    def writer(self) -> str:
        """Best guess at the writing torch version, from the format and the rebuilders used."""
        used = set(self.rebuilders)
        if self.format == "tar":
            guess = "torch 0.1.x (<= 0.1.9)"
        elif self.format == "legacy":
            if "torch._utils._rebuild_tensor_v2" in used or "torch._utils._rebuild_qtensor" in used:
                guess = "torch 0.4 - 1.5"
            elif "torch._utils._rebuild_tensor" in used:
                guess = "torch 0.1.10 - 0.3"
            else:
                guess = "torch 0.1.10 - 1.5"
        elif self.format in ("zip", "torchscript"):
            guess = "torch >= 1.6" if self.format == "zip" else "torch.jit.save"
        else:
            guess = "pickle.dump, not torch.save"
        return guess + (", Python 2" if self.python2 else "")


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``obj`` (tensors on the CPU) and ``info`` about the file."""

    obj: Any
    info: CheckpointInfo
