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


def fold_batchnorm(graph):
    """Fold eval-mode batch_norm into the conv2d/linear that alone feeds it (deployment: one layer fewer).

    w' = w * g / sqrt(var + eps) per output channel, b' = (b - mean) * g / sqrt(var + eps) + beta,
    computed in float64. Only where the conv/linear output has no other reader and its weights are
    constants; runs in place and returns whether anything changed.
    """
    import torch
    import torch.nn.functional as F

    changed = False
    for bn in list(graph.nodes):
        if bn.op != "batch_norm" or bn.params.get("training"):
            continue
        src = bn.params["input"]
        layer = src.producer
        if layer is None or layer.op not in ("conv2d", "linear") or len(src.users) != 1 or src in graph.outputs:
            continue
        p, q = layer.params, bn.params
        consts = [p["weight"], q["running_mean"], q["running_var"]] + [v for v in (p["bias"], q["weight"], q["bias"])
                                                                       if v is not None]
        if not all(isinstance(v, Blob) and v.is_constant for v in consts):
            continue
        weight = p["weight"].value.double()
        out_ch = weight.shape[0]
        mean, var = q["running_mean"].value.double(), q["running_var"].value.double()
        gamma = q["weight"].value.double() if q["weight"] is not None else torch.ones(out_ch, dtype=torch.float64)
        beta = q["bias"].value.double() if q["bias"] is not None else torch.zeros(out_ch, dtype=torch.float64)
        bias = p["bias"].value.double() if p["bias"] is not None else torch.zeros(out_ch, dtype=torch.float64)
        scale = gamma / torch.sqrt(var + float(q["eps"]))
        dtype = p["weight"].value.dtype
        new_w = (weight * scale.view(-1, *([1] * (weight.dim() - 1)))).to(dtype)
        new_b = ((bias - mean) * scale + beta).to(dtype)
        w_blob = graph.add_blob(f"{layer.name}.weight_folded", "const", tuple(new_w.shape), dtype, value=new_w)
        b_blob = graph.add_blob(f"{layer.name}.bias_folded", "const", tuple(new_b.shape), dtype, value=new_b)
        for old in [p["weight"]] + ([p["bias"]] if p["bias"] is not None else []):
            old.users = [u for u in old.users if u is not layer]
        layer.bottoms = [b for b in layer.bottoms if b is not p["weight"] and b is not p["bias"]] + [w_blob, b_blob]
        w_blob.users.append(layer)
        b_blob.users.append(layer)
        p["weight"], p["bias"] = w_blob, b_blob
        # the recorded call no longer matches: replay the canonical functional form
        if layer.op == "conv2d":
            layer.target, layer.kwargs = F.conv2d, {}
            layer.args = (p["input"], w_blob, b_blob, p["stride"], p["padding"], p["dilation"], p["groups"])
        else:
            layer.target, layer.kwargs, layer.args = F.linear, {}, (p["input"], w_blob, b_blob)
        layer.meta["folded_batchnorm"] = bn.name
        graph.replace_uses(bn.tops[0], src)
        graph.erase_node(bn)
        changed = True
    if changed:
        graph.lint()
    return changed
