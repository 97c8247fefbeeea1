"""Graph -> Graph clean-ups, each a plain function returning whether it changed anything."""
from __future__ import annotations

from tracecap.graph import Blob
from tracecap.ops import IDENTITY_OPS

_DROPOUTS = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"})
_CASTS = frozenset({"float", "to", "type_as", "double", "half", "type", "expand_as", "expand"})
_RESHAPES = frozenset({"view", "reshape", "flatten", "view_as", "reshape_as"})


def _data_input(node):
    blob = node.params.get("input")
    return blob if isinstance(blob, Blob) else (node.bottoms[0] if node.bottoms else None)


def is_identity(node):
    """True when the node's single output equals its data input (value, shape and dtype)."""
    src = _data_input(node)
    if src is None or len(node.tops) != 1:
        return False
    top = node.tops[0]
    if node.op in IDENTITY_OPS:
        return True
    if node.op in _DROPOUTS:
        return not node.params.get("training", False)
    if node.op in _CASTS or node.op in _RESHAPES:
        return top.shape == src.shape and top.dtype == src.dtype
    return False


def drop_identities(graph):
    changed = False
    for node in list(graph.nodes):
        if is_identity(node):
            graph.replace_uses(node.tops[0], _data_input(node))
            graph.erase_node(node)
            changed = True
    return changed


def eliminate_dead_code(graph):
    """Remove nodes whose results reach no output (shape probes, debug prints, unused heads)."""
    changed = False
    for node in reversed(list(graph.nodes)):
        if not any(t.users or t in graph.outputs for t in node.tops):
            graph.erase_node(node)
            changed = True
    return changed


def cleanup(graph):
    """The default pipeline run by capture: identities out, then dead code out."""
    drop_identities(graph)
    eliminate_dead_code(graph)
    graph.lint()
    return graph
