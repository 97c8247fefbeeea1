"""The graph IR: a small, torch.fx-like list of Nodes joined by versioned Blobs.

A ``Blob`` is one value: a graph input, an activation produced by a node, or a
constant (parameter, buffer, or a tensor computed without the inputs). An
in-place op produces a *new version* of a blob (``x``, ``x@1``, ...), so every
edge points at exactly the value it consumed. Nodes are created only through
``Graph.create_node``; a node's bottoms derive from its params, and changing
those (``set_param``, ``replace_input``) keeps ``producer``/``users`` right.
"""
from __future__ import annotations

import re

BLOB_KINDS = ("input", "activation", "param", "const")

_NAME_OK = re.compile(r"[^A-Za-z0-9_.\-/@]")

QUANT_SCHEMES = ("per_tensor_affine", "per_channel_affine")


class Quantization:
    """How a quantized tensor's integers map to real values: ``x = (q - zero_point) * scale``.

    ``scheme`` is per-tensor (``scale``/``zero_point`` are numbers) or per-channel (tuples, one
    entry per index of ``axis``); ``dtype`` is the integer type (``torch.quint8``, ``qint8``,
    ``qint32``).
    """

    __slots__ = ("scheme", "dtype", "scale", "zero_point", "axis")

    def __init__(self, scheme, dtype, scale, zero_point, axis=None):
        if scheme not in QUANT_SCHEMES:
            raise ValueError(f"quantization scheme {scheme!r} is not one of {QUANT_SCHEMES}")
        if (scheme == "per_channel_affine") != (axis is not None):
            raise ValueError(f"{scheme}: axis must be given exactly for per-channel quantization, got {axis!r}")
        self.scheme, self.dtype, self.axis = scheme, dtype, axis
        self.scale, self.zero_point = scale, zero_point

    @classmethod
    def of(cls, tensor):
        """The quantization of a quantized torch tensor, or None for any other tensor."""
        if not getattr(tensor, "is_quantized", False):
            return None
        import torch
        if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_affine_float_qparams):
            return cls("per_channel_affine", tensor.dtype,
                       tuple(float(v) for v in tensor.q_per_channel_scales()),
                       tuple(int(v) for v in tensor.q_per_channel_zero_points()), int(tensor.q_per_channel_axis()))
        return cls("per_tensor_affine", tensor.dtype, float(tensor.q_scale()), int(tensor.q_zero_point()))

    def __eq__(self, other):
        return isinstance(other, Quantization) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):
        axis = f", axis={self.axis}" if self.axis is not None else ""
        return f"Quantization({self.scheme}, {self.dtype}, scale={self.scale}, zero_point={self.zero_point}{axis})"


class Blob:
    """One tensor value in the graph.

    ``quant`` is the tensor's :class:`Quantization` when it is a quantized tensor, else None.
    ``users`` is an insertion-ordered set (a dict with None values, as in torch.fx): a node reading
    a blob twice (``x + x``) is one user.
    """

    __slots__ = ("name", "kind", "shape", "dtype", "quant", "producer", "users", "value", "meta")

    def __init__(self, name, kind, shape=None, dtype=None, value=None, quant=None):
        if kind not in BLOB_KINDS:
            raise ValueError(f"blob {name!r}: kind {kind!r} is not one of {BLOB_KINDS}")
        self.name = name
        self.kind = kind
        self.shape = tuple(shape) if shape is not None else None
        self.dtype = dtype
        self.quant = quant
        self.producer = None      # Node that wrote this version (None for inputs/constants)
        self.users = {}           # Nodes that read this version, in execution order (keys; values None)
        self.value = value        # torch.Tensor for param/const blobs, else None
        self.meta = {}

    @property
    def is_constant(self):
        return self.kind in ("param", "const")

    def __repr__(self):
        shape = "x".join(map(str, self.shape)) if self.shape is not None else "?"
        return f"%{self.name}[{shape}]"


def blobs_in(obj):
    """The distinct Blobs inside ``obj`` (lists, tuples, dicts, any depth), in walk order."""
    found = {}
    _collect_blobs(obj, found)
    return list(found)


def _collect_blobs(obj, found):
    kind = type(obj)
    if kind is Blob:
        found[obj] = None
    elif kind not in _LEAVES:
        kind = _container_kind(obj)
        if kind is not None:
            for o in (obj.values() if kind is dict else obj):
                _collect_blobs(o, found)


_LEAVES = frozenset({int, float, bool, str, type(None)})


class Node:
    """One recorded op.

    ``op``     canonical op name (``conv2d``, ``add``, ``getitem`` ...), see tracecap.ops
    ``params`` the op's arguments bound to canonical names; tensors appear as Blobs. Setting it
               (or ``set_param``/``replace_input``) re-derives ``bottoms`` and the users of the
               blobs involved, as fx's ``args`` setter does: edges never need editing by hand.
    ``target``/``args``/``kwargs`` the exact call that ran (Blobs in place of tensors), for replay;
               ``target`` None means "replay from op and params" (after a pass rewrote them)
    ``meta``   scope (module path), module (class name), source ("file:line"), inplace flag ...
    """

    __slots__ = ("graph", "name", "op", "_params", "target", "args", "kwargs", "_bottoms", "tops", "meta")

    def __init__(self, graph, name, op, params, target, args, kwargs, tops, meta):
        self.graph = graph
        self.name = name
        self.op = op
        self._params = {}
        self._bottoms = []
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.tops = list(tops)
        self.meta = meta
        self.params = params

    # -- edges --------------------------------------------------------------------------
    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, params):
        self._params = params
        self._refresh_bottoms()

    @property
    def bottoms(self):
        """The distinct Blobs this node reads, in the order of its params (derived: do not edit)."""
        return self._bottoms

    def set_param(self, key, value):
        """Set one canonical parameter (a Blob, a number, None ...) and keep the edges right."""
        self._params[key] = value
        self._refresh_bottoms()

    def replace_input(self, old, new):
        """Read Blob ``new`` wherever this node read ``old``: params, args and kwargs, in one place."""
        def swap(obj):
            return map_structure(obj, lambda o: new if o is old else o)
        self._params = swap(self._params)
        self.args = swap(self.args)
        self.kwargs = swap(self.kwargs)
        self._refresh_bottoms()

    def _refresh_bottoms(self):
        new = blobs_in(self._params)
        for b in self._bottoms:
            if b not in new:
                b.users.pop(self, None)
        for b in new:
            b.users[self] = None
        self._bottoms = new

    def _detach(self):
        for b in self._bottoms:
            b.users.pop(self, None)
        self._bottoms = []

    # -- presentation ---------------------------------------------------------------------
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


class Namespace:
    """Unique, legal names, one space per kind ("node", "blob": Caffe, too, keeps them apart).

    A taken base gets the first free ``base_1``, ``base_2`` ...; each base remembers where its
    search stopped, so naming n nodes costs O(n) and not O(n^2) (fx's ``_Namespace`` idea).
    Names are never released, which is what makes the remembered position correct.
    """

    def __init__(self):
        self._taken = {"node": set(), "blob": set()}
        self._next = {"node": {}, "blob": {}}

    def __call__(self, base, space="blob"):
        taken, nexts = self._taken[space], self._next[space]
        base = _NAME_OK.sub("_", str(base)) or "v"
        name = base
        if name in taken:
            i = nexts.get(base, 1)
            name = f"{base}_{i}"
            while name in taken:
                i += 1
                name = f"{base}_{i}"
            nexts[base] = i + 1
        taken.add(name)
        return name


class Graph:
    """Nodes in execution order, the blobs they join, and the graph's inputs/outputs."""

    def __init__(self):
        self.nodes = []
        self.blobs = {}
        self.inputs = []
        self.outputs = []
        self.warnings = []
        self._namespace = Namespace()

    # -- construction -----------------------------------------------------------------
    def unique_name(self, base, space="blob"):
        """The one namer: legal characters, unique within its space ("node" or "blob") by suffix."""
        return self._namespace(base, space)

    def add_blob(self, base_name, kind, shape=None, dtype=None, value=None, quant=None):
        name = self.unique_name(base_name)
        blob = Blob(name, kind, shape, dtype, value, quant)
        self.blobs[name] = blob
        return blob

    def create_node(self, name, op, params, target=None, args=(), kwargs=None, tops=(), meta=None):
        """A new node at the end; its bottoms are the Blobs in ``params``."""
        for t in tops:
            if t.producer is not None:
                raise ValueError(f"blob {t.name} already has producer {t.producer.name}; in-place writes need a new version")
        node = Node(self, self.unique_name(name, "node"), op, params, target, args, kwargs or {}, tops, meta or {})
        for t in node.tops:
            t.producer = node
        self.nodes.append(node)
        return node

    def erase_node(self, node):
        """Remove a node whose tops nobody reads."""
        for t in node.tops:
            if t.users or t in self.outputs:
                raise ValueError(f"cannot erase {node.name}: its top {t.name} is still used")
        for t in node.tops:
            self.blobs.pop(t.name, None)
        node._detach()
        self.nodes.remove(node)

    def replace_uses(self, old, new):
        """Make every reader of blob ``old`` read ``new`` instead (params/args included)."""
        for user in list(old.users):
            user.replace_input(old, new)
        self.outputs = [new if o is old else o for o in self.outputs]

    def assign_names(self):
        """Final, readable names (run once, after the clean-up passes).

        A node alone in its module call takes the scope's name (``features.0``), others
        ``scope.op`` (``layer1.0.relu``); activations take their producer's name (``name.k`` for
        its k-th top), in-place versions ``root@k``; inputs keep their argument path, constants
        their label. Reads the builder's ``meta`` keys: node ``scope``/``call``, blob ``path``,
        ``label``, ``root``, ``version``.
        """
        from collections import Counter
        per_call = Counter((n.meta.get("scope", ""), n.meta.get("call")) for n in self.nodes)
        self._namespace = Namespace()
        renamed = {}

        def take(blob, base):
            blob.name = self.unique_name(base)
            renamed[blob.name] = blob

        for blob in self.inputs:
            take(blob, blob.meta.get("path", blob.name))
        for blob in self.blobs.values():
            if blob.is_constant and blob.producer is None and blob not in self.inputs:
                take(blob, blob.meta.get("label", blob.name))
        for node in self.nodes:
            scope = node.meta.get("scope", "")
            alone = scope and per_call[scope, node.meta.get("call")] == 1
            node.name = self.unique_name(scope if alone else (f"{scope}.{node.op}" if scope else node.op), "node")
            for k, top in enumerate(node.tops):
                root = top.meta.get("root")
                take(top, f"{root.name}@{top.meta['version']}" if root is not None
                     else (node.name if k == 0 else f"{node.name}.{k}"))
        self.blobs = renamed
        return self

    # -- queries ----------------------------------------------------------------------
    @property
    def params(self):
        """name -> tensor for every constant blob still in use."""
        return {b.name: b.value for b in self.blobs.values() if b.is_constant and b.users}

    def lint(self):
        """Check the invariants mappers rely on; raise ValueError saying how to fix."""
        _Lint(self).run()
        return True

    # -- presentation -----------------------------------------------------------------
    def to_dict(self):
        """JSON-ready description (no tensor data)."""
        def blob(b):
            out = {"name": b.name, "kind": b.kind, "shape": list(b.shape) if b.shape else None,
                   "dtype": str(b.dtype).replace("torch.", "") if b.dtype is not None else None}
            if b.quant is not None:
                q = b.quant
                out["quant"] = {"scheme": q.scheme, "dtype": str(q.dtype).replace("torch.", ""),
                                "scale": q.scale, "zero_point": q.zero_point, "axis": q.axis}
            return out
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


class _Lint:
    """The checks behind ``Graph.lint``: names, ownership, edges, order."""

    def __init__(self, graph):
        self.g = graph

    def run(self):
        self.names()
        seen = set(id(b) for b in self.g.inputs)
        seen.update(id(b) for b in self.g.blobs.values() if b.is_constant)
        for node in self.g.nodes:
            self.edges(node)
            for b in node.bottoms:
                if id(b) not in seen:
                    raise ValueError(f"{node.where()} reads {b.name} before it is produced (nodes out of order?)")
            for t in node.tops:
                if t.producer is not node:
                    raise ValueError(f"{t.name}.producer is not {node.name}")
                seen.add(id(t))
        for o in self.g.outputs:
            if id(o) not in seen:
                raise ValueError(f"output {o.name} is never produced")

    def names(self):
        for key, blob in self.g.blobs.items():
            if blob.name != key:
                raise ValueError(f"graph.blobs[{key!r}] is blob {blob.name!r}: rename blobs with Graph.assign_names")
            for user in blob.users:
                if blob not in user.bottoms:
                    raise ValueError(f"{blob.name}.users holds {user.name}, which does not read it: change edges "
                                     f"with Node.set_param/replace_input")
        names = [n.name for n in self.g.nodes]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"node names are not unique: {', '.join(dup)}; name nodes with Graph.unique_name")

    def edges(self, node):
        if node.graph is not self.g:
            raise ValueError(f"{node.name} belongs to another graph")
        if node.bottoms != blobs_in(node.params):
            raise ValueError(f"{node.where()}: bottoms {[b.name for b in node.bottoms]} are not the Blobs in its "
                             f"params; change params with Node.set_param/replace_input, not in place")
        for b in node.bottoms:
            if node not in b.users:
                raise ValueError(f"{b.name}.users misses {node.name}: change edges with Node.set_param/replace_input")
            if self.g.blobs.get(b.name) is not b:
                raise ValueError(f"{node.where()} reads {b.name}, which is not in graph.blobs")


def map_structure(obj, fn):
    """``obj`` with ``fn`` applied to every leaf inside lists, tuples and dicts (containers are copied).

    Named tuples (``torch.return_types``, ``Size``-like) count as leaves. Behind argument
    snapshots, tensor->Blob substitution, Blob->value resolution and blob replacement (the
    recorder's ``_tensors`` and the builder's ``_flat_with_paths`` walk too, but collect
    instead of copying).
    """
    kind = _container_kind(obj)
    if kind is None:
        return fn(obj)
    if kind is list:
        return [map_structure(o, fn) for o in obj]
    if kind is tuple:
        return tuple(map_structure(o, fn) for o in obj)
    return {k: map_structure(v, fn) for k, v in obj.items()}


def has_containers(values):
    """Does any of ``values`` hold a list, tuple or dict map_structure would walk into?"""
    return any(_container_kind(v) is not None for v in values)


_EXACT = {list: list, tuple: tuple, dict: dict}


def _container_kind(obj):
    """list, tuple or dict when map_structure walks into ``obj``; None for a leaf. Exact types are
    answered by one dict lookup (the hot path of the builder); subclasses by isinstance."""
    kind = _EXACT.get(type(obj), False)
    if kind is not False:
        return kind
    if isinstance(obj, list):
        return list
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple
    if isinstance(obj, dict):
        return dict
    return None


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
