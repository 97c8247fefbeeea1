"""Safe reading of PyTorch checkpoints of every format, without running code from the file.

``load_checkpoint`` returns the saved object with CPU tensors; ``find_state_dict`` finds the
weights in a checkpoint dict; ``fix_state_dict`` adapts old keys to a model; ``inspect_checkpoint``
describes a file.  See the module docstrings for the formats and the safety model.
"""
from .fixups import FixReport, fix_state_dict
from .inspect import format_inspection, inspect_checkpoint
from .load import TrustWarning, load_checkpoint, read_checkpoint
from .module_tree import ModuleNode
from .placeholders import ClassRef, Opaque
from .result import Checkpoint, CheckpointInfo
from .storages import StorageRef
from .weights import WeightsReport, find_state_dict

__all__ = [
    "load_checkpoint", "read_checkpoint", "fix_state_dict", "find_state_dict", "inspect_checkpoint",
    "format_inspection", "Checkpoint", "CheckpointInfo", "FixReport", "WeightsReport", "ModuleNode",
    "Opaque", "ClassRef", "StorageRef", "TrustWarning",
]
