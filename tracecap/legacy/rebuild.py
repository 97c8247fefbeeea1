"""A real model from a whole-module checkpoint (``torch.save(model)``), without running the file.

The safe reader gives a ``ModuleNode`` tree: class paths, recorded attributes, parameters,
buffers and children.  Each node becomes a module in one of three ways, tried in this order:

* **torch's own classes** (``torch.nn.modules.*``: Sequential, Conv2d, BatchNorm2d ...): the
  class is constructed anew from the recorded hyper-parameters (so a 0.3 file gets today's
  attributes, e.g. ``padding_mode``), then its parameters and buffers are loaded;
* **your classes, with ``code=file.py``** (explicit opt-in: that file is imported and runs): the
  class of the same name is instantiated without ``__init__`` and given the recorded
  attributes, children and tensors - what unpickling does, with the code you named;
* **a bundled zoo architecture** (``tracecap.legacy_models``) whose class name, state-dict keys
  and shapes match the whole checkpoint (old keys fixed as ``fix_state_dict`` does).

Nothing named by the file is imported: a class is looked up only in ``torch.nn.modules``, in
your file, or in the zoo.  When none applies, the error lists every class it would need.
Semantics that changed since the file was written are kept: ``nn.Upsample``/bilinear saved
before 0.4 (no ``align_corners`` attribute) computed ``align_corners=True`` and is rebuilt so.
"""
from __future__ import annotations

import importlib
import inspect
import os
import runpy
import sys
import warnings

import torch
import torch.nn as nn

from tracecap.checkpoint import ClassRef, ModuleNode, fix_state_dict

from .errors import RevivalError

TORCH_MODULES = "torch.nn.modules."
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_SKIP_ARGS = {"self", "device", "dtype"}


def torch_class(class_path: str):
    """The torch.nn class a pickle names, if it is one of torch's own (``torch.nn.modules.*``)."""
    if not class_path.startswith(TORCH_MODULES):
        return None
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


def user_classes(code) -> dict:
    """nn.Module classes by name from the user's own file (run, as asked; its folder importable)."""
    path = os.fspath(code)
    if not os.path.isfile(path):
        raise RevivalError(f"--code {path}: no such file")
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        namespace = runpy.run_path(path, run_name="tracecap_code_" + os.path.splitext(os.path.basename(path))[0])
    finally:
        sys.path.pop(0)
    return {obj.__name__: obj for obj in namespace.values() if isinstance(obj, type) and issubclass(obj, nn.Module)}


def needed_classes(root: ModuleNode, namespace: dict) -> list:
    """(module path, class path) of every node neither torch nor ``namespace`` defines."""
    return [(path or "(root)", node.class_path) for path, node in root.named_modules()
            if torch_class(node.class_path) is None and node.class_name not in namespace]


# -- building ----------------------------------------------------------------------------------
def _derived(node: ModuleNode, name: str):
    """Constructor arguments that old pickles record only through their tensors."""
    params, buffers = node.parameters, node.buffers
    if name == "bias":
        return params.get("bias") is not None
    if name == "affine" or name == "elementwise_affine":
        return params.get("weight") is not None
    if name == "track_running_stats":
        return buffers.get("running_mean") is not None
    return inspect.Parameter.empty


def _construct(cls, node: ModuleNode, where: str) -> nn.Module:
    attrs = node.attrs
    if issubclass(cls, _CONTAINERS):
        return cls()
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in _SKIP_ARGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = attrs[name] if name in attrs else _derived(node, name)
        if value is inspect.Parameter.empty:
            if param.default is param.empty:
                raise RevivalError(f"{where}: cannot rebuild {cls.__name__}: the file does not record "
                                   f"its constructor argument {name!r}")
            continue
        kwargs[name] = value
    try:
        module = cls(**kwargs)
    except Exception as exc:  # the recorded values do not suit today's constructor
        raise RevivalError(f"{where}: {cls.__name__}(**{kwargs!r:.200}) failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(module, nn.Upsample) and "align_corners" not in attrs and \
            getattr(module, "mode", None) in ("bilinear", "bicubic", "linear", "trilinear"):
        module.align_corners = True  # what interpolation computed before torch 0.4
    return module


def _plain(value, depth=0):
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return True
    if isinstance(value, (tuple, list, set, frozenset)) and depth < 4:
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 4:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return isinstance(value, torch.Tensor)


def _torch_function(ref: ClassRef):
    """A function attribute such as ``self.act = F.relu`` (pickled by name), if it is torch's own."""
    if not (ref.module == "torch" or ref.module.startswith("torch.")):
        return None
    try:
        return getattr(importlib.import_module(ref.module), ref.name, None)
    except ImportError:
        return None


def _restore_user(cls, node: ModuleNode, where: str) -> nn.Module:
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    skipped = []
    for key, value in node.attributes().items():
        if not isinstance(key, str) or key in module.__dict__:
            continue  # fresh bookkeeping (_parameters, hooks ...) instead of the pickled one
        if _plain(value):
            module.__dict__[key] = value.clone() if isinstance(value, torch.Tensor) else value
        elif isinstance(value, ClassRef) and _torch_function(value) is not None:
            module.__dict__[key] = _torch_function(value)
        else:
            skipped.append(f"{key} ({type(value).__name__})")
    if skipped:
        warnings.warn(f"{where}: attributes of {node.class_path} not restored (objects of classes that "
                      f"are not imported): {', '.join(skipped)}")
    return module


def _load_tensors(module: nn.Module, node: ModuleNode, where: str, fresh: bool):
    for name, t in node.parameters.items():
        if fresh or name not in module._parameters:
            module._parameters[name] = None if t is None else nn.Parameter(t.detach().clone(), t.requires_grad)
            continue
        current = module._parameters[name]
        if (current is None) != (t is None) or (t is not None and current.shape != t.shape):
            raise RevivalError(f"{where}: parameter {name!r} is {_brief(t)} in the file but {_brief(current)} "
                               f"in today's {type(module).__name__}")
        if t is not None:
            with torch.no_grad():
                current.copy_(t)
    for name, t in node.buffers.items():
        current = module._buffers.get(name)
        if fresh or current is None or t is None:
            module._buffers[name] = None if t is None else t.detach().clone()
        elif current.shape != t.shape:
            raise RevivalError(f"{where}: buffer {name!r} is {_brief(t)} in the file but {_brief(current)} "
                               f"in today's {type(module).__name__}")
        else:
            current.copy_(t)
    if fresh:
        module._non_persistent_buffers_set = set(node.non_persistent_buffers)


def _brief(t):
    return "absent" if t is None else f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}"


def _build(node: ModuleNode, namespace: dict, where: str, depth=0) -> nn.Module:
    if depth > 200:
        raise RevivalError(f"{where}: modules nested more than 200 deep")
    cls = torch_class(node.class_path)
    if cls is not None:
        module = _construct(cls, node, where)
    else:
        module = _restore_user(namespace[node.class_name], node, where)
    for name, child in node.children.items():
        module._modules[name] = None if child is None else \
            _build(child, namespace, f"{where}.{name}" if where != "(root)" else name, depth + 1)
    _load_tensors(module, node, where, fresh=cls is None)
    return module


def _same_architecture(root: ModuleNode, candidate: nn.Module) -> bool:
    """Every recorded module has a namesake of the same class and the same plain attributes
    (kernel sizes, strides, a zoo model's options ...) in ``candidate``."""
    modules = dict(candidate.named_modules())
    for path, node in root.named_modules():
        twin = modules.get(path)
        if twin is None or type(twin).__name__ != node.class_name:
            return False
        for key, value in node.attrs.items():
            if key == "training" or isinstance(value, torch.Tensor) or not _plain(value) or not hasattr(twin, key):
                continue
            if not _equal(getattr(twin, key), value):
                return False
    return True


def _equal(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # values that do not compare plainly: not the same architecture
        return False


def zoo_match(root: ModuleNode):
    """(zoo name, model with the checkpoint's weights) when a bundled architecture fits, else None."""
    from tracecap import legacy_models as zoo
    state = root.state_dict()
    for name in zoo.NAMES:
        with torch.device("meta"):
            candidate = zoo.get_factory(name)()
        if type(candidate).__name__ != root.class_name or not _same_architecture(root, candidate):
            continue
        fixed, report = fix_state_dict(state, candidate)
        if report.ok:
            model = zoo.build(name, calibrate=False)
            model.load_state_dict(fixed, strict=True)
            return name, model
    return None


def rebuild_module(root: ModuleNode, code=None, source: str = "checkpoint") -> nn.Module:
    """An eval-mode ``nn.Module`` equal to the pickled one; ``RevivalError`` naming what is missing."""
    from tracecap.legacy_models.torch7_modules import Revived
    namespace = user_classes(code) if code is not None else {}
    needed = needed_classes(root, namespace)
    if not needed:
        return Revived(_build(root, namespace, "(root)"), source).eval()
    match = zoo_match(root)
    if match is not None:
        return match[1].eval()
    classes = sorted({cls for _, cls in needed})
    where = "; ".join(f"{cls} at {'the root' if path == '(root)' else path}" for path, cls in needed[:12])
    where += "; ..." if len(needed) > 12 else ""
    hint = ("your --code file defines none of them by these names" if code is not None else
            "give their definitions with --code FILE.py (that file is imported and run; nothing from the "
            "checkpoint is)")
    raise RevivalError(f"{source} holds a whole {root.class_path} module that needs classes tracecap does not "
                       f"have: {', '.join(classes)} (where: {where}); it is not a bundled zoo architecture "
                       f"either; {hint}")
