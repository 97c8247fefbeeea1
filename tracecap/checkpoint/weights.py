"""Find the weights inside whatever a training script chose to save.

Checkpoints are rarely a bare state dict: ``{'epoch', 'state_dict', 'optimizer', ...}``,
``{'net': <whole module>, 'acc': ...}``, ``{'model': ..., 'generator': ..., 'opt': ...}``.
``find_state_dict`` picks the weights by the names people use, falls back to the largest
tensor mapping, and describes everything else so nothing is silently dropped.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from tracecap.errors import CheckpointError

from .module_tree import ModuleNode
from .placeholders import ClassRef, Opaque

PREFERRED_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "module",
                  "weights", "params", "ema")


def is_state_dict(value) -> bool:
    """A mapping of str -> tensor (None allowed) with at least one tensor."""
    if not isinstance(value, Mapping) or not value:
        return False
    has_tensor = False
    for k, v in value.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, torch.Tensor)):
            return False
        has_tensor = has_tensor or v is not None
    return has_tensor


def _weights_of(value):
    if isinstance(value, ModuleNode):
        return value.state_dict(), f"whole module {value.class_path}"
    if is_state_dict(value):
        return value, "state dict"
    return None, None


def describe(value) -> str:
    """One short line about a checkpoint entry that is not the weights."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return f"tensor({value.item()!r})" if value.device.type == "cpu" and not value.is_quantized \
                else f"0-d {value.dtype} tensor"
        return f"tensor {str(value.dtype).replace('torch.', '')} {list(value.shape)}"
    if isinstance(value, ModuleNode):
        return f"whole module {value.class_path} ({value.num_parameters():,} parameters)"
    if isinstance(value, Opaque):
        return f"object of class {value.class_path} (not imported)"
    if isinstance(value, ClassRef):
        return f"reference to {value.path} (not imported)"
    if is_state_dict(value):
        return f"state dict ({len(value)} tensors)"
    if isinstance(value, Mapping) and "param_groups" in value and "state" in value:
        groups = value["param_groups"]
        return f"optimizer state ({len(groups) if isinstance(groups, list) else '?'} param groups)"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with {len(value)} keys"
    if isinstance(value, (list, tuple, set)):
        return f"{type(value).__name__} of {len(value)} items"
    return type(value).__name__


@dataclass
class WeightsReport:
    """Where the weights were found and what else the checkpoint holds."""

    source: str  # e.g. "['state_dict'] (state dict)", "top level (whole module model.RNN)"
    others: dict = field(default_factory=dict)  # key -> one-line description

    def __str__(self):
        lines = [f"weights: {self.source}"]
        for key, text in self.others.items():
            lines.append(f"  {key}: {text}")
        return "\n".join(lines)


def _search(obj, path, depth):
    """(weights, description) for the best tensor mapping at or below ``obj``, or (None, None)."""
    weights, kind = _weights_of(obj)
    if weights is not None:
        return weights, f"{path or 'top level'} ({kind})"
    if not isinstance(obj, Mapping) or depth > 2:
        return None, None
    for key in PREFERRED_KEYS:
        if key in obj:
            found = _search(obj[key], f"{path}[{key!r}]", depth + 1)
            if found[0] is not None:
                return found
    best = (None, None)
    for key, value in obj.items():  # no conventional name: the largest tensor mapping wins
        found = _search(value, f"{path}[{key!r}]", depth + 1)
        if found[0] is not None and (best[0] is None or len(found[0]) > len(best[0])):
            best = found
    return best


def find_state_dict(obj):
    """(state_dict, WeightsReport) for a loaded checkpoint; CheckpointError if it holds no weights.

    The state dict is the checkpoint's own mapping (not a copy), or a whole module's
    ``state_dict()``.  The report describes every other top-level entry.
    """
    weights, source = _search(obj, "", 0)
    if weights is None:
        keys = ", ".join(map(repr, list(obj)[:10])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"no weights found in the checkpoint (top level: {keys})")
    others = {}
    if isinstance(obj, Mapping) and not source.startswith("top level"):
        for key, value in obj.items():
            if not source.startswith(f"[{key!r}]"):
                others[str(key)] = describe(value)
    return weights, WeightsReport(source, others)
