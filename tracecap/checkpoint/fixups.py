"""Key fix-ups between an old state dict and today's model — explicit, reported, never silent.

The usual reasons ``load_state_dict`` fails on an old checkpoint:

* ``module.`` on every key: saved from ``nn.DataParallel`` (or the reverse);
* BatchNorm ``num_batches_tracked`` missing: saved before torch 0.4 (0 is what torch assumes);
* ``norm.1`` where the model says ``norm1``: torchvision DenseNet before 0.4's renaming.

``fix_state_dict`` applies exactly these, only where the target model confirms the new key,
and returns a ``FixReport`` whose ``str()`` is a readable diff of what still does not match.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from tracecap.errors import CheckpointError

from .module_tree import ModuleNode

DP_PREFIX = "module."
_DOTTED_INDEX = re.compile(r"(^|\.)([A-Za-z_]+)\.(\d+)(?=\.)")
_SHOW = 12


def _target_shapes(target) -> dict:
    """key -> shape (or None when only names are known) for a module, state dict or key list."""
    if isinstance(target, torch.nn.Module):
        target = target.state_dict()
    elif isinstance(target, ModuleNode):
        target = target.state_dict()
    if isinstance(target, Mapping):
        return {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else None) for k, v in target.items()}
    if isinstance(target, (list, tuple, set, frozenset)) and all(isinstance(k, str) for k in target):
        return {k: None for k in target}
    raise TypeError("target_model must be an nn.Module, a ModuleNode, a state dict or a collection of key names")


@dataclass
class FixReport:
    """What ``fix_state_dict`` changed and what still differs from the target model."""

    changes: list = field(default_factory=list)  # human-readable lines, one per kind of fix
    renamed: list = field(default_factory=list)  # (old key, new key)
    added: list = field(default_factory=list)  # keys created (num_batches_tracked)
    missing: list = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list = field(default_factory=list)  # in the checkpoint, not in the model
    shape_mismatches: list = field(default_factory=list)  # (key, checkpoint shape, model shape)
    matched: int = 0

    @property
    def ok(self) -> bool:
        """True when ``model.load_state_dict(fixed)`` will accept every key and shape."""
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def __str__(self):
        lines = [f"{self.matched} keys match the model"
                 + ("" if self.ok else f"; {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                                       f"{len(self.shape_mismatches)} with a different shape")]
        lines += [f"fixed: {c}" for c in self.changes]
        lines += _listing("- missing (in the model, not in the checkpoint)", self.missing)
        lines += _listing("+ unexpected (in the checkpoint, not in the model)", self.unexpected)
        lines += _listing("! shape differs (checkpoint vs model)",
                          [f"{k}: {list(a)} vs {list(b)}" for k, a, b in self.shape_mismatches])
        return "\n".join(lines)


def _listing(title, items):
    if not items:
        return []
    sign = title[0]
    out = [title[2:] + ":"]
    out += [f"  {sign} {item}" for item in items[:_SHOW]]
    if len(items) > _SHOW:
        out.append(f"  ... and {len(items) - _SHOW} more")
    return out


def _rename_all(sd: OrderedDict, fn) -> OrderedDict:
    return OrderedDict((fn(k), v) for k, v in sd.items())


def _fix_prefix(sd, wanted, report):
    keys = list(sd)
    while keys and all(k.startswith(DP_PREFIX) for k in keys) and not all(k.startswith(DP_PREFIX) for k in wanted):
        sd = _rename_all(sd, lambda k: k[len(DP_PREFIX):])
        keys = list(sd)
        report.changes.append(f"stripped the '{DP_PREFIX}' prefix (nn.DataParallel) from {len(keys)} keys")
    if keys and wanted and all(k.startswith(DP_PREFIX) for k in wanted) and not any(k.startswith(DP_PREFIX) for k in keys):
        sd = _rename_all(sd, lambda k: DP_PREFIX + k)
        report.changes.append(f"added the '{DP_PREFIX}' prefix (model is wrapped in nn.DataParallel) to {len(keys)} keys")
    return sd


def _merged_variants(key):
    """``a.norm.1.weight`` -> ``a.norm1.weight``: each single merge, then all at once."""
    matches = list(_DOTTED_INDEX.finditer(key))
    for m in matches:
        yield key[: m.start()] + m.expand(r"\1\2\3") + key[m.end():]
    if len(matches) > 1:
        yield _DOTTED_INDEX.sub(r"\1\2\3", key)


def _fix_dotted_indices(sd, wanted, report):
    renames = {}
    for key in sd:
        if key in wanted:
            continue
        for candidate in _merged_variants(key):
            if candidate in wanted and candidate not in sd and candidate not in renames.values():
                renames[key] = candidate
                break
    if renames:
        report.renamed.extend(renames.items())
        example = next(iter(renames.items()))
        report.changes.append(f"renamed {len(renames)} keys like {example[0]} -> {example[1]} "
                              f"(old DenseNet-style 'norm.1' names)")
        sd = _rename_all(sd, lambda k: renames.get(k, k))
    return sd


def _add_num_batches_tracked(sd, wanted, report):
    for key in wanted:
        if key.endswith("num_batches_tracked") and key not in sd:
            stem = key[: -len("num_batches_tracked")]
            if stem + "running_mean" in sd:
                sd[key] = torch.tensor(0, dtype=torch.long)
                report.added.append(key)
    if report.added:
        report.changes.append(f"added num_batches_tracked = 0 for {len(report.added)} BatchNorm layers "
                              f"(checkpoint predates torch 0.4)")
    return sd


def fix_state_dict(state_dict, target_model):
    """(fixed state dict, FixReport): ``state_dict`` adapted to ``target_model``'s keys.

    ``target_model`` is an ``nn.Module``, a ``ModuleNode``, a state dict, or a collection of key
    names.  The input is not modified; tensors are shared, not copied.
    """
    if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) for k in state_dict):
        raise CheckpointError("fix_state_dict expects a mapping of key names to tensors "
                              "(use find_state_dict to get one from a checkpoint)")
    shapes = _target_shapes(target_model)
    report = FixReport()
    sd = OrderedDict(state_dict.items())
    sd = _fix_prefix(sd, shapes, report)
    sd = _fix_dotted_indices(sd, shapes, report)
    sd = _add_num_batches_tracked(sd, shapes, report)

    ordered = OrderedDict((k, sd[k]) for k in shapes if k in sd)
    report.missing = [k for k in shapes if k not in sd]
    report.unexpected = [k for k in sd if k not in shapes]
    for k in report.unexpected:
        ordered[k] = sd[k]
    for k, v in ordered.items():
        want = shapes.get(k)
        if want is not None and isinstance(v, torch.Tensor) and tuple(v.shape) != want:
            report.shape_mismatches.append((k, tuple(v.shape), want))
    report.matched = len(shapes) - len(report.missing) - len(report.shape_mismatches)
    return ordered, report
