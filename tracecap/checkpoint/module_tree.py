"""Whole-module pickles (``torch.save(model)``) read as a class-free tree of ``ModuleNode``s.

An ``nn.Module`` pickles as "instance of <class> with this ``__dict__``"; its dict always holds
``_parameters``, ``_buffers`` and ``_modules``.  That is enough to recover the weights, the
hyper-parameters (kernel_size, stride, ...) and the structure without importing, let alone
running, the model's own class code — which may be missing, changed, or hostile.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from tracecap.errors import CheckpointError

from .placeholders import Opaque

MAX_DEPTH = 200


def looks_like_module(state) -> bool:
    """True for a pickled ``__dict__`` that carries nn.Module bookkeeping."""
    return isinstance(state, dict) and "_parameters" in state and "_modules" in state


def _entries(mapping, accept):
    if isinstance(mapping, Opaque):
        mapping = mapping.items
    if not isinstance(mapping, dict):
        return OrderedDict()
    return OrderedDict((k, v) for k, v in mapping.items() if isinstance(k, str) and accept(v))


def _is_simple(value, depth=0):
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)) and depth < 2 and len(value) <= 16:
        return all(_is_simple(v, depth + 1) for v in value)
    return False


class ModuleNode(Opaque):
    """A pickled nn.Module: ``class_name``, ``attrs``, ``parameters``, ``buffers``, ``children``.

    Built in place from the ``Opaque`` the unpickler created, so objects referring to the same
    module (shared submodules, optimizers holding parameters) still see one node.
    """

    @classmethod
    def adopt(cls, obj: Opaque) -> "ModuleNode":
        obj.__class__ = cls
        return obj

    @property
    def attrs(self) -> dict:
        """Public attributes (hyper-parameters such as kernel_size, stride, training)."""
        return {k: v for k, v in self.attributes().items() if isinstance(k, str) and not k.startswith("_")}

    @property
    def parameters(self) -> "OrderedDict[str, torch.Tensor | None]":
        return _entries(self.attributes().get("_parameters"), lambda v: v is None or isinstance(v, torch.Tensor))

    @property
    def buffers(self) -> "OrderedDict[str, torch.Tensor | None]":
        return _entries(self.attributes().get("_buffers"), lambda v: v is None or isinstance(v, torch.Tensor))

    @property
    def children(self) -> "OrderedDict[str, ModuleNode | None]":
        return _entries(self.attributes().get("_modules"), lambda v: v is None or isinstance(v, ModuleNode))

    @property
    def non_persistent_buffers(self) -> set:
        names = self.attributes().get("_non_persistent_buffers_set")
        return set(names) if isinstance(names, (set, frozenset, list, tuple)) else set()

    def __getattr__(self, name):
        if not name.startswith("__") and "state" in self.__dict__:
            for table in (self.children, self.parameters, self.buffers):
                if name in table:
                    return table[name]
        return super().__getattr__(name)

    # -- traversal ---------------------------------------------------------------------------
    def _walk(self, prefix, path, visit, depth=0):
        if depth > MAX_DEPTH:
            raise CheckpointError(f"module tree is nested deeper than {MAX_DEPTH} levels")
        if id(self) in path:
            return  # a module containing itself: stop instead of recursing forever
        path.add(id(self))
        visit(prefix, self)
        for name, child in self.children.items():
            if child is not None:
                child._walk(f"{prefix}{name}.", path, visit, depth + 1)
        path.discard(id(self))

    def named_modules(self):
        """[(dotted name, node)] in definition order, the root named ''."""
        out = []
        self._walk("", set(), lambda p, n: out.append((p[:-1], n)))
        return out

    def state_dict(self, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
        """The same keys, order and tensors ``model.state_dict()`` would give."""
        sd = OrderedDict()

        def visit(p, node):
            for name, t in node.parameters.items():
                if t is not None:
                    sd[p + name] = t
            skip = node.non_persistent_buffers
            for name, t in node.buffers.items():
                if t is not None and name not in skip:
                    sd[p + name] = t

        self._walk(prefix, set(), visit)
        return sd

    def num_parameters(self) -> int:
        seen, total = set(), 0
        for _, node in self.named_modules():
            for t in node.parameters.values():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel()
        return total

    # -- presentation ------------------------------------------------------------------------
    def describe(self) -> str:
        """``Conv2d(in_channels=3, kernel_size=(7, 7), ...)`` from the simple attributes."""
        shown = [f"{k}={v!r}" for k, v in self.attrs.items() if k != "training" and _is_simple(v)]
        return f"{self.class_name}({', '.join(shown)})"

    def summary(self) -> str:
        """Printable tree: one line per module, then its parameters and buffers with shapes."""
        lines = [f"{self.describe()}  [{self.class_path}]"]

        def visit(p, node):
            depth = p.count(".")
            pad = "  " * depth
            if p:
                lines.append(f"{pad}({p[:-1].rsplit('.', 1)[-1]}): {node.describe()}")
            for kind, table in (("param", node.parameters), ("buffer", node.buffers)):
                for name, t in table.items():
                    what = "None" if t is None else f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}"
                    lines.append(f"{pad}    {kind} {name}: {what}")

        self._walk("", set(), visit)
        lines.append(f"total parameters: {self.num_parameters():,}")
        return "\n".join(lines)

    def tree(self) -> dict:
        """The module tree as plain data (for ``--json``)."""
        def node_dict(node, name, path, depth):
            if depth > MAX_DEPTH:
                raise CheckpointError(f"module tree is nested deeper than {MAX_DEPTH} levels")
            path = path | {id(node)}
            return {
                "name": name,
                "class_name": node.class_name,
                "class_path": node.class_path,
                "attrs": {k: (v if _is_simple(v) else repr(v)[:200]) for k, v in node.attrs.items()},
                "parameters": {k: _tensor_brief(t) for k, t in node.parameters.items()},
                "buffers": {k: _tensor_brief(t) for k, t in node.buffers.items()},
                "children": [node_dict(c, n, path, depth + 1) for n, c in node.children.items()
                             if c is not None and id(c) not in path],
            }
        return node_dict(self, "", frozenset(), 0)

    def __repr__(self):
        return f"ModuleNode({self.class_path})"


def _tensor_brief(t):
    if t is None:
        return None
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
