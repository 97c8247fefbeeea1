"""Graph -> Graph rewrites, each a plain function returning whether it changed anything.

``run_passes`` runs a list of them, lints the graph after each, and reports which changed
it; ``cleanup`` (what ``capture`` runs) and ``--fold-bn`` go through it. Passes edit a node
through the IR's edge API (``Node.set_param``, ``Graph.replace_uses``, ``Graph.erase_node``),
never its bottoms or users by hand. A pass that changes a node's computation sets its
``target`` to None: the recorded call no longer matches, and replay computes the node from
its op and params (``tracecap.ops.reference``).
"""
from __future__ import annotations

import torch

from tracecap.graph import Blob
from tracecap.ops import CAST_OPS, DROPOUT_OPS, EXPAND_OPS, IDENTITY_OPS, RESHAPE_OPS


def run_passes(graph, passes, lint=True):
    """Run each pass on ``graph`` in turn, linting after each that changed it (one that changed
    nothing has edited nothing); return {pass name: changed?}."""
    report = {}
    for p in passes:
        name = getattr(p, "__name__", repr(p))
        report[name] = bool(p(graph))
        if lint and report[name]:
            try:
                graph.lint()
            except ValueError as exc:
                raise ValueError(f"after pass {name}: {exc}") from None
    return report


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
    if node.op in DROPOUT_OPS:
        return not node.params.get("training", False)
    if node.op in CAST_OPS or node.op in EXPAND_OPS or node.op in RESHAPE_OPS:
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


def _foldable_zero_pad(node):
    """(top, left) of a symmetric, non-negative zero ``pad`` node read only as convolution inputs."""
    if node.op != "pad" or len(node.tops) != 1:
        return None
    p = node.params
    pads = tuple(p["pad"]) if isinstance(p["pad"], (list, tuple)) else ()
    if p["mode"] != "constant" or (p["value"] or 0) != 0 or len(pads) != 4 or min(pads) < 0:
        return None
    left, right, top, bottom = pads
    out = node.tops[0]
    if left != right or top != bottom or out in node.graph.outputs or not out.users:
        return None
    if not all(u.op == "conv2d" and u.params["input"] is out and _numeric_padding(u) is not None
               for u in out.users):
        return None
    return top, left


def _numeric_padding(conv):
    """A conv2d's padding as (h, w) numbers; None for padding='same' that pads asymmetrically."""
    padding = conv.params["padding"]
    if padding == "valid":
        return 0, 0
    if padding == "same":
        weight, dil = conv.params["weight"], _pair(conv.params["dilation"])
        if not isinstance(weight, Blob) or weight.shape is None or len(weight.shape) != 4:
            return None
        eff = [(k - 1) * d for k, d in zip(weight.shape[2:], dil)]
        return None if eff[0] % 2 or eff[1] % 2 else (eff[0] // 2, eff[1] // 2)
    return _pair(padding)


def fold_pad_into_conv(graph):
    """A symmetric zero pad (``ZeroPad2d``, ``F.pad``) read only by convolutions becomes their padding."""
    changed = False
    for node in list(graph.nodes):
        extra = _foldable_zero_pad(node)
        if extra is None:
            continue
        for conv in list(node.tops[0].users):
            ph, pw = _numeric_padding(conv)
            conv.set_param("padding", (ph + extra[0], pw + extra[1]))
            conv.replace_input(node.tops[0], node.params["input"])
            conv.target, conv.args, conv.kwargs = None, (), {}
            conv.meta["folded_pad"] = node.name
        graph.erase_node(node)
        changed = True
    return changed


def _pair(v):
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))
    return int(v), int(v)


_COMPARISONS = {"gt": False, "ge": False, "lt": True, "le": True}   # op -> does the true branch take x < s?


def _scalar(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, Blob) and v.is_constant and v.value is not None and v.value.numel() == 1:
        return float(v.value.reshape(()).item())
    return None


def _where_parts(node):
    """(x, s, branch taken where x > s, branch taken where x < s) of ``where(x <cmp> s, a, b)``, or None."""
    args = node.params.get("args", [])
    if len(args) != 3 or node.params.get("kwargs"):
        return None
    cond, a, b = args
    if isinstance(a, Blob) and a.dtype == torch.bool:   # x.where(cond, other) is where(cond, x, other)
        cond, a = a, cond
    cmp = cond.producer if isinstance(cond, Blob) else None
    if cmp is None or cmp.op not in _COMPARISONS or len(cmp.params.get("args", [])) != 2:
        return None
    x, s = cmp.params["args"][0], _scalar(cmp.params["args"][1])
    if not isinstance(x, Blob) or x.is_constant or s is None or tuple(x.shape) != tuple(node.tops[0].shape):
        return None
    above, below = (b, a) if _COMPARISONS[cmp.op] else (a, b)
    return x, s, above, below


def _slope_of(branch, x):
    """c when ``branch`` is x * c (or c * x, or x itself: 1), else None."""
    if branch is x:
        return 1.0
    prod = branch.producer if isinstance(branch, Blob) else None
    if prod is None or prod.op != "mul":
        return None
    a, b = prod.params["input"], prod.params["other"]
    return _scalar(b) if a is x else _scalar(a) if b is x else None


def fold_compare_select(graph):
    """``torch.where(x > s, x, ...)`` forms that are activations become them: where(x > 0, x, c * x) is
    leaky_relu(x, c), where(x > s, x, s) is clamp(x, min=s) and where(x < s, x, s) clamp(x, max=s)
    (equal at x == s, so > and >= agree). Other selections stay (and are refused by the mappers)."""
    changed = False
    for node in list(graph.nodes):
        if node.op != "where":
            continue
        parts = _where_parts(node)
        if parts is None:
            continue
        x, s, above, below = parts
        if above is x and s == 0.0 and _slope_of(below, x) is not None:
            new = ("leaky_relu", {"input": x, "negative_slope": _slope_of(below, x), "inplace": False})
        elif above is x and _scalar(below) == s:
            new = ("clamp", {"input": x, "min": s, "max": None})
        elif below is x and _scalar(above) == s:
            new = ("clamp", {"input": x, "min": None, "max": s})
        else:
            continue
        node.op, node.params = new
        node.target, node.args, node.kwargs = None, (), {}
        node.meta["folded_where"] = True
        changed = True
    return changed


DEFAULT_PASSES = (drop_identities, fold_compare_select, eliminate_dead_code, fold_pad_into_conv)


def cleanup(graph):
    """The default pipeline run by capture: identities out, dead code out, zero pads into convolutions."""
    run_passes(graph, DEFAULT_PASSES)
    return graph


def fold_batchnorm(graph):
    """Fold eval-mode batch_norm into the conv2d/linear that alone feeds it (deployment: one layer fewer).

    w' = w * g / sqrt(var + eps) per output channel, b' = (b - mean) * g / sqrt(var + eps) + beta,
    computed in float64. Only where the conv/linear output has no other reader and its weights are
    constants; runs in place and returns whether anything changed.
    """
    import torch

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
        layer.set_param("weight", graph.add_blob(f"{layer.name}.weight_folded", "const", tuple(new_w.shape), dtype,
                                                 value=new_w))
        layer.set_param("bias", graph.add_blob(f"{layer.name}.bias_folded", "const", tuple(new_b.shape), dtype,
                                               value=new_b))
        layer.target, layer.args, layer.kwargs = None, (), {}  # replay computes it from the new params
        layer.meta["folded_batchnorm"] = bn.name
        graph.replace_uses(bn.tops[0], src)
        graph.erase_node(bn)
        changed = True
    return changed
