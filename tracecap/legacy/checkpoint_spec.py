"""A checkpoint file as the model SPEC of ``tracecap convert``.

``tracecap convert net.t7 --input 1x3x224x224`` (a Lua Torch7 network) and ``tracecap convert
ckpt.pth --input ...`` (a whole-module ``torch.save(model)``, optionally with ``--code
file.py``) both start here: the file is read safely, the network found in it is rebuilt as a
PyTorch module, and the rest of the pipeline is the usual one.
"""
from __future__ import annotations

import os

from tracecap.checkpoint import ModuleNode, read_checkpoint
from tracecap.checkpoint.torch7 import LuaTable, TorchObject
from tracecap.checkpoint.weights import PREFERRED_KEYS, describe

from .errors import RevivalError
from .rebuild import rebuild_module
from .torch7_nn import build_network


def is_checkpoint_spec(spec) -> bool:
    """True when SPEC names an existing file that is not Python source (``file.py:Class``)."""
    return isinstance(spec, (str, os.PathLike)) and os.path.isfile(spec) and not os.fspath(spec).endswith(".py")


def _pick(obj, kind, what: str, source: str):
    """``obj`` itself, or the one value of kind ``kind`` in its top level (a conventional key first)."""
    if isinstance(obj, kind):
        return obj, ""
    if isinstance(obj, (dict, LuaTable)):
        for key in PREFERRED_KEYS:
            if isinstance(obj.get(key), kind):
                return obj[key], f"[{key!r}]"
        found = [(k, v) for k, v in obj.items() if isinstance(v, kind)]
        if len(found) == 1:
            return found[0][1], f"[{found[0][0]!r}]"
        if found:
            raise RevivalError(f"{source} holds several {what}s ({', '.join(repr(k) for k, _ in found)}); "
                               f"tracecap cannot tell which one to convert")
    return None, None


def resolve_checkpoint_spec(spec, code=None):
    """(model, None, short name) for a checkpoint file SPEC, or None when SPEC is no such file."""
    if not is_checkpoint_spec(spec):
        if code is not None:
            raise RevivalError(f"--code applies to a whole-module checkpoint SPEC; {spec!r} is not a checkpoint file")
        return None
    ck = read_checkpoint(spec)
    short = os.path.basename(os.fspath(spec)).split(".")[0] or "model"
    if ck.info.format == "torch7":
        net, key = _pick(ck.obj, TorchObject, "Torch7 module", spec)
        if net is None:
            raise RevivalError(f"{spec} is a Torch7 file holding {describe(ck.obj)}, not an nn module")
        return build_network(net, source=f"{spec}{key}"), None, short
    node, key = _pick(ck.obj, ModuleNode, "whole module", spec)
    if node is None:
        raise RevivalError(
            f"{spec} holds no whole module ({describe(ck.obj)}), only data such as weights: give the "
            f"architecture as SPEC (a bundled name, pkg.module:factory or file.py:Class) and this file "
            f"with --weights")
    return rebuild_module(node, code=code, source=f"{spec}{key}"), None, short
