"""``inspect_checkpoint``: what a checkpoint file holds, as plain data and as a table.

The dict is the ``--json`` output, so it only contains JSON types; ``format_inspection`` renders
the same dict for people.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from tracecap.errors import CheckpointError

from .load import read_checkpoint
from . import quantized
from .module_tree import ModuleNode
from .placeholders import Opaque
from .torch7_inspect import torch7_report
from .weights import describe, find_state_dict

MAX_DEPTH = 12
VERSION_KEYS = ("torch_version", "pytorch_version", "pytorch-lightning_version", "version")


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _key_text(key, index) -> str:
    """A mapping key as a path component; keys that are objects (optimizer state keyed by
    Parameter) are named by position, not by their possibly enormous repr."""
    if isinstance(key, str):
        return key if len(key) <= 80 else key[:77] + "..."
    if key is None or isinstance(key, (bool, int, float)):
        return repr(key)
    return f"#{index}"


def iter_tensors(obj):
    """(dotted path, tensor) for every tensor reachable from ``obj``, each container visited once."""
    seen = set()
    stack = [("", obj, 0)]
    out = []
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, torch.Tensor):
            out.append((path, value))
            continue
        if depth > MAX_DEPTH or id(value) in seen:
            continue
        if isinstance(value, ModuleNode):
            seen.add(id(value))
            prefix = f"{path}." if path else ""
            out.extend((prefix + k, t) for k, t in value.state_dict().items())
            out.extend(quantized.packed_tensors(value, prefix))
            continue
        if isinstance(value, Opaque):
            seen.add(id(value))
            packed = quantized.tuple_state(value)   # packed parameters pickle a tuple of tensors
            value = value.attributes() if packed is None else packed
        if isinstance(value, Mapping):
            seen.add(id(value))
            children = [(f"{path}.{_key_text(k, i)}" if path else _key_text(k, i), v)
                        for i, (k, v) in enumerate(value.items())]
        elif isinstance(value, (list, tuple)):
            seen.add(id(value))
            children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend((p, v, depth + 1) for p, v in reversed(children))
    return out


def _module_roots(obj):
    if isinstance(obj, ModuleNode):
        return [("", obj)]
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items() if isinstance(v, ModuleNode)]
    return []


def _torch_version(obj):
    if isinstance(obj, Mapping):
        for key in VERSION_KEYS:
            if isinstance(obj.get(key), str):
                return f"{obj[key]} (from the checkpoint's {key!r} entry)"
    return None


def inspect_checkpoint(path) -> dict:
    """Plain-data report: format, writer, tensors (name, dtype, shape, bytes), totals, module tree."""
    ck = read_checkpoint(path)
    info, obj = ck.info, ck.obj
    torch7 = torch7_report(obj) if info.format == "torch7" else None
    tensors = []
    for name, t in (torch7["tensors"] if torch7 else iter_tensors(obj)):
        entry = {"name": name or "(the whole object)", "dtype": _dtype_name(t.dtype), "shape": list(t.shape),
                 "bytes": t.numel() * t.element_size()}
        if t.is_quantized:
            entry["quantization"] = quantized.describe(t)
        tensors.append(entry)
    report = {
        "path": info.path,
        "file_size": info.file_size,
        "format": info.format,
        "format_description": info.format_name,
        "format_version": info.format_version,
        "writer": info.writer,
        "torch_version": _torch_version(obj),
        "byteorder": info.byteorder,
        "python2": info.python2,
        "storage_locations": info.locations,
        "storage_bytes": sum(s.nbytes for s in info.storages if s.root is None),
        "classes_not_imported": info.classes,
        "module_sources": info.module_sources,
        "top_level": describe(obj) if not isinstance(obj, Mapping) else {str(k): describe(v) for k, v in obj.items()},
        "weights": None,
        "other_entries": {},
        "tensors": tensors,
        "total_parameters": None,
        "module_trees": [],
        "notes": list(info.notes),
    }
    if torch7:
        report.update(weights=torch7["weights"], total_parameters=torch7["total_parameters"],
                      module_trees=torch7["module_trees"])
        return report
    try:
        weights, found = find_state_dict(obj)
        report["weights"] = found.source
        report["other_entries"] = found.others
        unique = {id(t): t for t in weights.values() if isinstance(t, torch.Tensor)}
        report["total_parameters"] = sum(t.numel() for t in unique.values())
    except CheckpointError as exc:  # a bare tensor, a list ...: count every distinct tensor
        report["notes"].append(f"{exc}; total parameters counts every tensor")
        unique = {id(t): t for _, t in iter_tensors(obj)}
        report["total_parameters"] = sum(t.numel() for t in unique.values())
    for name, node in _module_roots(obj):
        tree = node.tree()
        tree["name"] = name
        tree["summary"] = node.summary()
        report["module_trees"].append(tree)
        if report["weights"] and "whole module" in report["weights"]:
            report["total_parameters"] = node.num_parameters()
    return report


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def format_inspection(report: dict, max_rows: int = 500) -> str:
    """The report as an aligned text table, followed by module trees."""
    loc = ", ".join(f"{k} ({v} storages)" for k, v in report["storage_locations"].items()) or "-"
    head = [
        ("file", f"{report['path']} ({_human_bytes(report['file_size'])})"),
        ("format", f"{report['format_description']}" + (f", version {report['format_version']}"
                                                         if report["format_version"] is not None else "")),
        ("writer", report["writer"]),
        ("torch version", report["torch_version"] or "not recorded in the file"),
        ("byte order", report["byteorder"]),
        ("saved on", f"{loc}; loaded on cpu"),
    ]
    if report["classes_not_imported"]:
        head.append(("not imported", ", ".join(report["classes_not_imported"])))
    if report["weights"]:
        head.append(("weights", report["weights"]))
    for key, text in report["other_entries"].items():
        head.append((f"  {key}", text))
    width = max(len(k) for k, _ in head)
    lines = [f"{k.ljust(width)} : {v}" for k, v in head]

    rows = [(t["name"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", f"{t['bytes']:,}")
            for t in report["tensors"]]
    shown = rows[:max_rows]
    header = ("name", "dtype", "shape", "bytes")
    widths = [max(len(r[i]) for r in shown + [header]) for i in range(4)]
    lines.append("")
    lines.append("  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    lines.append("  ".join("-" * w for w in widths))
    for r in shown:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more tensors (use --json for all)")
    total_bytes = sum(t["bytes"] for t in report["tensors"])
    lines.append("")
    lines.append(f"{len(rows)} tensors, {_human_bytes(total_bytes)} "
                 f"({_human_bytes(report['storage_bytes'])} of distinct storage)"
                 + (f"; total parameters: {report['total_parameters']:,}"
                    if report["total_parameters"] is not None else ""))
    lines.extend(quantized.format_rows(report["tensors"][:max_rows]))
    for tree in report["module_trees"]:
        lines.append("")
        lines.append(f"module tree{' ' + repr(tree['name']) if tree['name'] else ''}:")
        lines.append(tree["summary"])
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
