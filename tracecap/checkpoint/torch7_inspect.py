"""What a Torch7 file holds, for ``tracecap inspect``: tensors by path and the module tree.

Torch7 modules keep their children in ``modules`` (a table 1..n) and their weights in fields
(``weight``, ``bias``, ``running_mean`` ...), next to scratch buffers (``output``, ``gradInput``,
``gradWeight``, ``finput`` ...) that are empty in a cleaned model and mean nothing for
inference.  The tree shows each module's class, its hyper-parameters and its non-empty tensors.
"""
from __future__ import annotations

import torch

from .storages import StorageRef
from .torch7 import LuaFunction, LuaTable, TableKey, TorchObject

PARAMETER_FIELDS = ("weight", "bias")
BUFFER_FIELDS = ("running_mean", "running_var", "running_std")
SCRATCH_FIELDS = {"output", "gradInput", "gradWeight", "gradBias", "finput", "fgradInput", "_type", "train",
                  "modules", "_input", "_gradOutput", "save_mean", "save_std", "indices", "noise"}


def _children(value):
    """(name, child) pairs of a container value, in file order."""
    if isinstance(value, TorchObject):
        value = value.fields
    if isinstance(value, LuaTable):
        return [(str(k.value if isinstance(k, TableKey) else k), v) for k, v in value.items()]
    if isinstance(value, LuaFunction):
        return [("upvalues", value.upvalues)]
    return []


def named_tensors(obj):
    """(dotted path, tensor) for every tensor reachable from ``obj``; each container visited once."""
    out, seen, stack = [], set(), [("", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, torch.Tensor):
            out.append((path or "(the whole object)", value))
            continue
        if id(value) in seen or not isinstance(value, (TorchObject, LuaTable, LuaFunction)):
            continue
        seen.add(id(value))
        stack.extend((f"{path}.{k}" if path else k, v) for k, v in reversed(_children(value)))
    return out


def modules_of(obj: TorchObject):
    children = obj.get("modules")
    items = children.as_list() if isinstance(children, LuaTable) else None
    return [m for m in items if isinstance(m, TorchObject)] if items else []


def _simple(value):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= 40 else value[:37] + "..."
    if isinstance(value, StorageRef):
        if value.numel <= 8:
            return value.tensor().tolist()
        return f"{str(value.dtype).replace('torch.', '')} storage [{value.numel}]"
    return None


def describe_module(obj: TorchObject) -> str:
    shown = []
    for k, v in obj.fields.items():
        if k in SCRATCH_FIELDS or isinstance(v, torch.Tensor):
            continue
        simple = _simple(v)
        if simple is not None or v is None:
            shown.append(f"{k}={simple!r}")
        elif isinstance(v, TorchObject):
            shown.append(f"{k}=<{v.typename}>")
    return f"{obj.typename}({', '.join(map(str, shown))})"


def _tensor_fields(obj: TorchObject):
    return [(k, v) for k, v in obj.fields.items()
            if isinstance(v, torch.Tensor) and v.numel() and k not in SCRATCH_FIELDS]


def _walk(root: TorchObject, visit):
    """Depth-first over modules (iterative; shared modules shown where they first appear)."""
    seen, stack = set(), [(root, "", 0)]
    while stack:
        node, name, depth = stack.pop()
        if id(node) in seen:
            visit(node, name, depth, True)
            continue
        seen.add(id(node))
        visit(node, name, depth, False)
        stack.extend((child, str(i), depth + 1) for i, child in reversed(list(enumerate(modules_of(node), 1))))


def module_tree_text(root: TorchObject) -> str:
    lines = []

    def visit(node, name, depth, repeated):
        pad = "  " * depth
        label = f"({name}) " if name else ""
        if repeated:
            lines.append(f"{pad}{label}{node.typename} (shared, shown above)")
            return
        lines.append(f"{pad}{label}{describe_module(node)}")
        for k, t in _tensor_fields(node):
            lines.append(f"{pad}    {k}: {str(t.dtype).replace('torch.', '')} {list(t.shape)}")

    _walk(root, visit)
    return "\n".join(lines)


def module_tree_data(root: TorchObject) -> dict:
    """The tree as plain data (for ``--json``)."""
    nodes = {}

    def visit(node, name, depth, repeated):
        entry = {"name": name, "class_name": node.typename, "version": node.version,
                 "fields": {str(k): _simple(v) for k, v in node.fields.items()
                            if k not in SCRATCH_FIELDS and _simple(v) is not None},
                 "tensors": {str(k): {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                             for k, t in _tensor_fields(node)},
                 "children": []}
        if repeated:
            entry = {"name": name, "class_name": node.typename, "shared": True, "children": []}
        nodes.setdefault(depth, []).append(entry)
        if depth:
            nodes[depth - 1][-1]["children"].append(entry)

    _walk(root, visit)
    return nodes[0][0]


def parameter_count(roots) -> int:
    seen, total = set(), 0
    for root in roots:
        def visit(node, name, depth, repeated):
            nonlocal total
            for k in PARAMETER_FIELDS:
                t = node.get(k)
                if isinstance(t, torch.Tensor) and id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel()
        _walk(root, visit)
    return total


def module_roots(obj):
    """(name, module) for the object itself or the modules stored in its top-level table."""
    if isinstance(obj, TorchObject):
        return [("", obj)]
    if isinstance(obj, LuaTable):
        return [(str(k), v) for k, v in obj.items() if isinstance(v, TorchObject)]
    return []


def torch7_report(obj) -> dict:
    """The parts of ``inspect_checkpoint``'s report that differ for Torch7 files."""
    roots = module_roots(obj)
    trees = []
    for name, root in roots:
        tree = module_tree_data(root)
        tree["name"] = name
        tree["summary"] = module_tree_text(root)
        trees.append(tree)
    return {
        "tensors": named_tensors(obj),
        "module_trees": trees,
        "weights": "weight/bias fields of the Torch7 modules" if roots else None,
        "total_parameters": parameter_count([r for _, r in roots]) if roots else None,
    }
