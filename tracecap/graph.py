"""The graph IR: a small, torch.fx-like list of Nodes joined by versioned Blobs.

A ``Blob`` is one value: a graph input, an activation produced by a node, or a
constant (parameter, buffer, or a tensor computed without the inputs). An
in-place op produces a *new version* of a blob (``x``, ``x@1``, ...), so every
edge points at exactly the value it consumed. Nodes are created only through
``Graph.create_node``, which keeps ``producer``/``users`` consistent.
"""
from __future__ import annotations

import re

BLOB_KINDS = ("input", "activation", "param", "const")

_NAME_OK = re.compile(r"[^A-Za-z0-9_.\-/@]")


class Blob:
    """One tensor value in the graph."""

    __slots__ = ("name", "kind", "shape", "dtype", "producer", "users", "value", "meta")

    def __init__(self, name, kind, shape=None, dtype=None, value=None):
        if kind not in BLOB_KINDS:
            raise ValueError(f"blob {name!r}: kind {kind!r} is not one of {BLOB_KINDS}")
        self.name = name
        self.kind = kind
        self.shape = tuple(shape) if shape is not None else None
        self.dtype = dtype
        self.producer = None      # Node that wrote this version (None for inputs/constants)
        self.users = []           # Nodes that read this version, in execution order
        self.value = value        # torch.Tensor for param/const blobs, else None
        self.meta = {}

    @property
    def is_constant(self):
        return self.kind in ("param", "const")

    def __repr__(self):
        shape = "x".join(map(str, self.shape)) if self.shape is not None else "?"
        return f"%{self.name}[{shape}]"


class Node:
    """One recorded op.

    ``op``     canonical op name (``conv2d``, ``add``, ``getitem`` ...), see tracecap.ops
    ``params`` the op's arguments bound to canonical names; tensors appear as Blobs
    ``target``/``args``/``kwargs`` the exact call that ran (Blobs in place of tensors), for replay
    ``meta``   scope (module path), module (class name), source ("file:line"), inplace flag ...
    """

    __slots__ = ("graph", "name", "op", "params", "target", "args", "kwargs", "bottoms", "tops", "meta")

    def __init__(self, graph, name, op, params, target, args, kwargs, bottoms, tops, meta):
        self.graph = graph
        self.name = name
        self.op = op
        self.params = params
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.bottoms = list(bottoms)
        self.tops = list(tops)
        self.meta = meta

    @property
    def source(self):
        return self.meta.get("source", "?")

    @property
    def scope(self):
        return self.meta.get("scope", "")

    def where(self):
        """'op `conv2d` in module `features.0` (Conv2d) at net.py:12' - for error messages."""
        scope = self.scope or "<top level>"
        module = self.meta.get("module")
        mod = f" ({module})" if module else ""
        return f"op `{self.op}` (node {self.name}) in module `{scope}`{mod} at {self.source}"

    def format(self):
        bottoms = ", ".join(map(repr, self.bottoms))
        tops = ", ".join(map(repr, self.tops))
        return f"{tops} = {self.op}({bottoms})  # {self.name} @ {self.source}"

    def __repr__(self):
        return f"<Node {self.name}: {self.op}>"


class Graph:
    """Nodes in execution order, the blobs they join, and the graph's inputs/outputs."""

    def __init__(self):
        self.nodes = []
        self.blobs = {}
        self.inputs = []
        self.outputs = []
        self.warnings = []
        self._names = {"node": set(), "blob": set()}  # Caffe, too, keeps layer and blob names apart

    # -- construction -----------------------------------------------------------------
    def unique_name(self, base, space="blob"):
        """The one namer: legal characters, unique within its space ("node" or "blob") by suffix."""
        taken = self._names[space]
        base = _NAME_OK.sub("_", str(base)) or "v"
        name, i = base, 1
        while name in taken:
            name = f"{base}_{i}"
            i += 1
        taken.add(name)
        return name

    def add_blob(self, base_name, kind, shape=None, dtype=None, value=None):
        name = self.unique_name(base_name)
        blob = Blob(name, kind, shape, dtype, value)
        self.blobs[name] = blob
        return blob

    def create_node(self, name, op, params, target=None, args=(), kwargs=None, bottoms=(), tops=(), meta=None):
        node = Node(self, self.unique_name(name, "node"), op, params, target, args, kwargs or {}, bottoms, tops, meta or {})
        for b in node.bottoms:
            b.users.append(node)
        for t in node.tops:
            if t.producer is not None:
                raise ValueError(f"blob {t.name} already has producer {t.producer.name}; in-place writes need a new version")
            t.producer = node
        self.nodes.append(node)
        return node

    def erase_node(self, node):
        """Remove a node whose tops nobody reads."""
        for t in node.tops:
            if t.users or t in self.outputs:
                raise ValueError(f"cannot erase {node.name}: its top {t.name} is still used")
            self.blobs.pop(t.name, None)
        for b in node.bottoms:
            b.users = [u for u in b.users if u is not node]
        self.nodes.remove(node)

    def replace_uses(self, old, new):
        """Make every reader of blob ``old`` read ``new`` instead (params/args included)."""
        for user in old.users:
            user.bottoms = [new if b is old else b for b in user.bottoms]
            user.params = _swap(user.params, old, new)
            user.args = _swap(user.args, old, new)
            user.kwargs = _swap(user.kwargs, old, new)
            new.users.append(user)
        old.users = []
        self.outputs = [new if o is old else o for o in self.outputs]

    # -- queries ----------------------------------------------------------------------
    @property
    def params(self):
        """name -> tensor for every constant blob still in use."""
        return {b.name: b.value for b in self.blobs.values() if b.is_constant and b.users}

    def lint(self):
        """Check the invariants mappers rely on; raise ValueError saying how to fix."""
        seen = set(id(b) for b in self.inputs)
        seen.update(id(b) for b in self.blobs.values() if b.is_constant)
        for node in self.nodes:
            if node.graph is not self:
                raise ValueError(f"{node.name} belongs to another graph")
            for b in node.bottoms:
                if id(b) not in seen:
                    raise ValueError(f"{node.where()} reads {b.name} before it is produced (nodes out of order?)")
                if node not in b.users:
                    raise ValueError(f"{b.name}.users misses {node.name}: build edges with create_node/replace_uses")
            for t in node.tops:
                if t.producer is not node:
                    raise ValueError(f"{t.name}.producer is not {node.name}")
                seen.add(id(t))
        for o in self.outputs:
            if id(o) not in seen:
                raise ValueError(f"output {o.name} is never produced")
        return True

    # -- presentation -----------------------------------------------------------------
    def to_dict(self):
        """JSON-ready description (no tensor data)."""
        def blob(b):
            return {"name": b.name, "kind": b.kind, "shape": list(b.shape) if b.shape else None,
                    "dtype": str(b.dtype).replace("torch.", "") if b.dtype is not None else None}
        return {
            "inputs": [blob(b) for b in self.inputs],
            "outputs": [blob(b) for b in self.outputs],
            "params": [blob(b) for b in self.blobs.values() if b.is_constant and b.users],
            "nodes": [{
                "name": n.name, "op": n.op,
                "bottoms": [b.name for b in n.bottoms], "tops": [t.name for t in n.tops],
                "shapes": [list(t.shape) if t.shape is not None else None for t in n.tops],
                "params": _jsonable(n.params),
                "scope": n.scope, "module": n.meta.get("module"), "source": n.source,
            } for n in self.nodes],
            "warnings": list(self.warnings),
        }

    def __str__(self):
        rows = [("name", "op", "bottoms", "tops", "shapes", "weights", "source")]
        for n in self.nodes:
            data = [b.name for b in n.bottoms if not b.is_constant]
            weights = sum(1 for b in n.bottoms if b.is_constant)
            rows.append((n.name, n.op, ",".join(data), ",".join(t.name for t in n.tops),
                         " ".join("x".join(map(str, t.shape)) if t.shape is not None else "?" for t in n.tops),
                         str(weights) if weights else "", _short_path(n.source)))
        widths = [min(max(len(r[i]) for r in rows), 48) for i in range(len(rows[0]))]
        lines = ["inputs:  " + ", ".join(map(repr, self.inputs)),
                 "outputs: " + ", ".join(map(repr, self.outputs))]
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __repr__(self):
        return f"<Graph: {len(self.nodes)} nodes, {len(self.inputs)} inputs, {len(self.outputs)} outputs>"


def _short_path(source):
    """'file:line' relative to the working directory when the file lies below it."""
    import os
    path, _, line = source.rpartition(":")
    if path and os.path.isabs(path):
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            return f"{rel}:{line}"
    return source


def map_structure(obj, fn):
    """``obj`` with ``fn`` applied to every leaf inside lists, tuples and dicts (containers are copied).

    Named tuples (``torch.return_types``, ``Size``-like) count as leaves. The one walker behind
    argument snapshots, tensor->Blob substitution, Blob->value resolution and blob replacement.
    """
    if isinstance(obj, list):
        return [map_structure(o, fn) for o in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(map_structure(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: map_structure(v, fn) for k, v in obj.items()}
    return fn(obj)


def _swap(obj, old, new):
    return map_structure(obj, lambda o: new if o is old else o)


def _jsonable(obj):
    if isinstance(obj, Blob):
        return "%" + obj.name
    if isinstance(obj, (list, tuple)):
        return [_jsonable(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, slice):
        return {"slice": [obj.start, obj.stop, obj.step]}
    return repr(obj)
