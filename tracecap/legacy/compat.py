"""Old semantics, opt-in: ``with tracecap.legacy.compat("0.3"):`` runs 2017 model code as PyTorch 0.1-0.3 did.

Also ``tracecap.capture(legacy="0.3")`` and ``tracecap convert --legacy 0.3`` (which applies it while the
model file is loaded, built, run for the reference output and captured). Outside a block nothing is
patched; inside, exactly this changes (``PATCHES`` below is the one list of what is replaced):

=======================================  ==============================  ==========================================
idiom                                    today's PyTorch, no compat      under compat
=======================================  ==============================  ==========================================
``F.upsample(x, mode="bilinear")``,      ``align_corners=False``:        ``align_corners=True``, what 0.1-0.3
``nn.Upsample(mode="bilinear")`` (also   other numbers, silently         computed (THNN: source index =
``linear``, ``trilinear``) without                                       out index * (in - 1) / (out - 1))
``align_corners``
``F.upsample_bilinear``,                 ``align_corners=True``          unchanged (0.3 computed the same)
``nn.UpsamplingBilinear2d``
``Variable(x, volatile=True)``           a warning, no effect: results   nothing computed from it records a
                                         record a graph, ``.volatile``   graph; ``.volatile`` is True on it and
                                         is always False                 on what it computes
``loss.data[0]``, ``x[0]``, ``x[-1]``    IndexError                      the number (``.item()``), as 0.3's
on a 0-dim tensor                                                        one-element tensors gave it
``.cuda()``, ``module.cuda()``,          fail without CUDA               run on the CPU, one warning per block
``torch.cuda.FloatTensor(...)`` (every                                   (machines with CUDA: unchanged)
``torch.cuda.*Tensor``),
``x.type(torch.cuda.FloatTensor)``
Python 2 ``/`` sizes: a float given to   TypeError                       a whole float is the integer, with a
``view``/``reshape``/``expand``/                                         warning at the user's file:line; one
``repeat``, ``interpolate``'s ``size``,                                  that is not whole is a CompatError
a layer constructor (``SIZED_LAYERS``)                                   naming the line - never truncated
``F.softmax(x)``, ``F.log_softmax(x)``   the legacy dim (0 for 0/1/3-D   unchanged; tracecap maps that dim
without ``dim``                          input, else 1), a warning
``F.sigmoid``, ``F.tanh``, ``inplace``   work (the loss arguments with   unchanged
flags, ``size_average``/``reduce``       a warning), as in 0.3
``x.cuda(async=True)``, ``print x`` in   SyntaxError                     rewritten when ``tracecap convert``
a model file                                                             loads the file (``source_rewrite``)
=======================================  ==============================  ==========================================

A block is process-wide (the patches are on torch's classes and modules) and re-entrant: blocks nest, an
object can be entered again, and every patch is undone when the outermost block exits, also on an
exception. Volatile tracking is a ``TorchFunctionMode`` of the entering thread, so a block must begin
outside ``capture()`` (its mode then sits below capture's); ``capture(legacy=...)`` enters it first.
Every replacement acts as torch's own outside a block, so a reference to one kept past the block is harmless.
"""
from __future__ import annotations

import functools
import inspect
import math
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Variable
from torch.nn.modules import batchnorm, conv, pooling, rnn
from torch.overrides import TorchFunctionMode

from tracecap import recorder
from tracecap.errors import TracecapError

__all__ = ["compat", "active", "legacy_option", "CompatError", "CompatWarning", "PATCHES", "SIZED_LAYERS"]


class CompatError(TracecapError):
    """Old model code cannot be given its old meaning exactly (a size that is not a whole number, Python 2
    syntax the load-time rewrite does not cover, an unknown version); the message names the file:line."""


class CompatWarning(UserWarning):
    """compat changed something on the model code's behalf (a float size made an integer, CUDA run on CPU,
    a source line rewritten); the warning points at the user's file:line."""


# ---- state ---------------------------------------------------------------------------------------
class _State:
    lock = threading.RLock()
    depth = 0        # compat blocks open, all threads together
    applied = []     # (Patch, the attribute's previous value in owner.__dict__ or _MISSING), in order
    warned = set()   # warning keys already given in the current outermost block


_thread = threading.local()   # .depth: blocks open on this thread; .mode: its volatile mode
_MISSING = object()


def active() -> bool:
    """True while any compat block is open."""
    return _State.depth > 0


def _check_version(version) -> str:
    parts = str(version).strip().split(".")
    if len(parts) in (2, 3) and all(p.isdigit() for p in parts) and parts[0] == "0" and parts[1] in ("1", "2", "3"):
        return "0.3"
    raise CompatError(f"legacy version {version!r}: tracecap knows the semantics of PyTorch 0.1-0.3 (give '0.3'; "
                      f"they agree on every idiom compat changes); 0.4 and later need no compat")


class compat:
    """``with compat("0.3"):`` - old semantics for the code run in the block (see the module docstring)."""

    def __init__(self, version="0.3"):
        self.version = _check_version(version)

    def __enter__(self):
        _enter()
        return self

    def __exit__(self, exc_type, exc, tb):
        _exit()
        return False

    def __repr__(self):
        return f"compat({self.version!r})"


def _enter():
    thread_depth = getattr(_thread, "depth", 0)
    if thread_depth == 0:
        capturing = getattr(sys.modules["tracecap.capture"]._active, "capture", None)
        if capturing is not None:
            raise CompatError("compat() entered inside an active capture(): begin it before the capture block, or "
                              "write tracecap.capture(legacy='0.3')")
    with _State.lock:
        if _State.depth == 0:
            _State.applied = _apply(PATCHES)
            _State.warned = set()
        _State.depth += 1
    _thread.depth = thread_depth + 1
    if thread_depth == 0:
        try:
            _thread.mode = _VolatileMode()
            _thread.mode.__enter__()
        except BaseException:
            _thread.depth = 0
            _leave_process()
            raise


def _exit():
    if not getattr(_thread, "depth", 0):
        raise CompatError("compat() exited on a thread that did not enter it (or more often than entered)")
    _thread.depth -= 1
    try:
        if _thread.depth == 0:
            mode, _thread.mode = _thread.mode, None
            mode.__exit__(None, None, None)
    finally:
        _leave_process()


def _leave_process():
    with _State.lock:
        _State.depth -= 1
        if _State.depth == 0:
            applied, _State.applied = _State.applied, []
            _undo(applied)


@dataclass(frozen=True)
class Patch:
    """One attribute compat replaces while active: ``owner.name = replacement``."""
    owner: object
    name: str
    replacement: object
    idiom: str
    only_without_cuda: bool = False


def _apply(patches):
    done = []
    try:
        for p in patches:
            if p.only_without_cuda and torch.cuda.is_available():
                continue
            previous = vars(p.owner).get(p.name, _MISSING)
            setattr(p.owner, p.name, p.replacement)
            done.append((p, previous))
    except BaseException:
        _undo(done)
        raise
    return done


def _undo(done):
    """Restore every attribute, in reverse order; one that fails does not stop the others."""
    failure = None
    for p, previous in reversed(done):
        try:
            if previous is _MISSING:
                delattr(p.owner, p.name)
            else:
                setattr(p.owner, p.name, previous)
        except Exception as exc:  # pragma: no cover - torch's classes accept these assignments
            failure = failure or exc
    if failure is not None:
        raise failure


def legacy_option(function):
    """Give ``function`` a keyword argument ``legacy=None``; when given, the call runs inside ``compat(legacy)``
    (``tracecap convert --legacy 0.3``: loading, building, the reference forward and the capture)."""
    @functools.wraps(function)
    def run(*args, legacy=None, **kwargs):
        if legacy is None:
            return function(*args, **kwargs)
        with compat(legacy):
            return function(*args, **kwargs)
    sig = inspect.signature(function)
    extra = inspect.Parameter("legacy", inspect.Parameter.KEYWORD_ONLY, default=None)
    run.__signature__ = sig.replace(parameters=[*sig.parameters.values(), extra])
    return run


# ---- where the user's code is ----------------------------------------------------------------------
def user_site():
    """(filename, line) of the nearest caller outside torch, tracecap and the stdlib: the user's line."""
    f = sys._getframe(1)
    first = None
    while f is not None:
        kind = recorder._file_kind(f.f_code.co_filename)
        if kind == "user":
            return f.f_code.co_filename, f.f_lineno
        if first is None and kind == "stdlib":
            first = (f.f_code.co_filename, f.f_lineno)
        f = f.f_back
    return first or ("<unknown>", 0)


def warn_once(key, message, site):
    """A CompatWarning at the user's file:line, once per key in the outermost block."""
    if key in _State.warned:
        return
    _State.warned.add(key)
    warnings.warn_explicit(message, CompatWarning, site[0], site[1])


# ---- Python 2 `/` sizes ------------------------------------------------------------------------------
def _has_float(obj, depth=0):
    if isinstance(obj, float):
        return True
    if isinstance(obj, (tuple, list)) and depth < 3:
        return any(_has_float(o, depth + 1) for o in obj)
    return False


def _integers(obj, what, site):
    """obj with every whole float made an int (warned); a float that is not whole is a CompatError."""
    if isinstance(obj, float):
        if not obj.is_integer():
            floor = math.floor(obj) if math.isfinite(obj) else obj
            raise CompatError(
                f"{site[0]}:{site[1]}: {what} got {obj!r}, a float where torch needs an integer, and not a whole "
                f"number: Python 2's `/` on integers floored it (to {floor}), Python 3's does not. tracecap does not "
                f"truncate it silently: write `//` (or int(...)) in the model code if the floor is meant")
        warn_once(("float", site, what), f"{what} got {obj!r}, a float where torch needs an integer (Python 2's `/` "
                  f"on integers gave {int(obj)}); using {int(obj)} - write `//` to make the code say so", site)
        return int(obj)
    if isinstance(obj, (tuple, list)) and _has_float(obj):
        fixed = [_integers(o, what, site) for o in obj]
        return fixed if isinstance(obj, list) else tuple(fixed)
    return obj


def _sized_method(original, name):
    """Tensor.view & co.: whole float sizes become ints (only where torch would raise a TypeError)."""
    @functools.wraps(original)
    def method(self, *sizes, **kwargs):
        if _State.depth and (_has_float(sizes) or _has_float(list(kwargs.values()))):
            site = user_site()
            sizes = _integers(sizes, f"Tensor.{name}()", site)
            kwargs = {k: _integers(v, f"Tensor.{name}({k}=...)", site) for k, v in kwargs.items()}
        return original(self, *sizes, **kwargs)
    return method


#: layer classes whose integer hyper-parameters accept a whole float under compat (their subclasses too:
#: ``_ConvNd`` covers Conv1d/2d/3d and the transposed ones, ``_NormBase`` BatchNorm*/InstanceNorm*)
SIZED_LAYERS = (
    (conv._ConvNd, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "output_padding",
                    "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.Bilinear, ("in1_features", "in2_features", "out_features")),
    (batchnorm._NormBase, ("num_features",)),
    (nn.GroupNorm, ("num_groups", "num_channels")),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.LocalResponseNorm, ("size",)),
    (nn.Embedding, ("num_embeddings", "embedding_dim", "padding_idx")),
    (rnn.RNNBase, ("input_size", "hidden_size", "num_layers", "proj_size")),
    (rnn.RNNCellBase, ("input_size", "hidden_size")),
    (nn.PReLU, ("num_parameters",)),
    (pooling._MaxPoolNd, ("kernel_size", "stride", "padding", "dilation")),
    (nn.AvgPool1d, ("kernel_size", "stride", "padding")),
    (nn.AvgPool2d, ("kernel_size", "stride", "padding")),
    (nn.AvgPool3d, ("kernel_size", "stride", "padding")),
    (pooling._AdaptiveAvgPoolNd, ("output_size",)),
    (pooling._AdaptiveMaxPoolNd, ("output_size",)),
    (nn.Upsample, ("size",)),
    (nn.PixelShuffle, ("upscale_factor",)),
)


def _sized_init(cls, names):
    original = vars(cls)["__init__"]
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if _State.depth and (_has_float(args) or _has_float(list(kwargs.values()))):
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                bound = None  # torch's own call below says what is wrong
            if bound is not None:
                site = user_site()
                for name in names:
                    if name in bound.arguments:
                        what = f"{type(self).__name__}({name}=...)"
                        bound.arguments[name] = _integers(bound.arguments[name], what, site)
                return original(*bound.args, **bound.kwargs)
        return original(self, *args, **kwargs)
    return __init__


# ---- bilinear upsampling as 0.1-0.3 computed it ---------------------------------------------------------
_interpolate = F.interpolate
# the callers whose default alignment was align_corners=True up to 0.3.1 (F.upsample_bilinear and
# nn.UpsamplingBilinear2d pass True themselves; F.interpolate did not exist before 0.4.1)
_OLD_DEFAULT_CALLERS = (F.upsample.__code__, nn.Upsample.forward.__code__)
_LINEAR_MODES = ("linear", "bilinear", "trilinear")


@functools.wraps(_interpolate)
def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    if _State.depth:
        if align_corners is None and mode in _LINEAR_MODES:
            caller = sys._getframe(1).f_code
            if caller is _OLD_DEFAULT_CALLERS[0] or caller is _OLD_DEFAULT_CALLERS[1]:
                align_corners = True
        if _has_float(size):
            site = user_site()
            size = _integers(size, "interpolate(size=...)", site)
    return _interpolate(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)


# ---- 0-dim tensors indexed like 0.3's one-element tensors -------------------------------------------------
_getitem = torch.Tensor.__getitem__


@functools.wraps(_getitem)
def getitem(self, index):
    if type(index) is int and (index == 0 or index == -1) and _State.depth:
        with torch._C.DisableTorchFunction():  # asking the shape is not an op of the user's
            zero_dim = self.dim() == 0
        if zero_dim:
            return self.item()
    return _getitem(self, index)


# ---- volatile ---------------------------------------------------------------------------------------------
# id(tensor) -> weakref, for the tensors computed from a volatile Variable (not a WeakSet: it compares
# tensors with ==, which is elementwise)
_volatile = {}


def is_volatile(t) -> bool:
    ref = _volatile.get(id(t))
    return ref is not None and ref() is t


def _mark_volatile(obj):
    if isinstance(obj, torch.Tensor):
        if not is_volatile(obj):
            key = id(obj)
            _volatile[key] = weakref.ref(obj, lambda r, key=key: _volatile.get(key) is r and _volatile.pop(key))
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            _mark_volatile(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            _mark_volatile(o)


def _reads_volatile(obj, depth=0):
    if isinstance(obj, torch.Tensor):
        return is_volatile(obj)
    if depth < 3 and isinstance(obj, (tuple, list)):
        return any(_reads_volatile(o, depth + 1) for o in obj)
    if depth < 3 and isinstance(obj, dict):
        return any(_reads_volatile(o, depth + 1) for o in obj.values())
    return False


class _VolatileMode(TorchFunctionMode):
    """Volatile as in 0.3: an op reading a volatile tensor records no graph, and what it returns is volatile."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _volatile and (_reads_volatile(args) or _reads_volatile(kwargs)):
            with torch.no_grad():
                result = func(*args, **kwargs)
            _mark_volatile(result)
            return result
        return func(*args, **kwargs)


_variable_new = torch._C._LegacyVariableBase.__new__


def variable_new(cls, data=None, requires_grad=False, volatile=False, *rest, **kwargs):
    if not (_State.depth and volatile):
        return _variable_new(cls, data, requires_grad, volatile, *rest, **kwargs)
    v = _variable_new(cls, data, False, *rest, **kwargs)  # volatile wins over requires_grad, as in 0.3
    _mark_volatile(v)
    return v


def _set_volatile(self, value):
    if value:
        _mark_volatile(self)
    else:
        _volatile.pop(id(self), None)


volatile_property = property(is_volatile, _set_volatile, doc="0.3's Variable.volatile (tracecap.legacy.compat)")


# ---- CUDA code on a machine without CUDA ------------------------------------------------------------------
def _warn_cuda():
    warn_once("cuda", "the model code asks for CUDA (.cuda(), torch.cuda.*Tensor), which this machine does not "
              "have: running on the CPU instead (this warning is given once per compat block)", user_site())


def _stays_on_cpu(original):
    """``Tensor.cuda`` / ``Module.cuda`` under compat: the object itself, on the CPU."""
    @functools.wraps(original)
    def cuda(self, *args, **kwargs):
        if _State.depth:
            _warn_cuda()
            return self
        return original(self, *args, **kwargs)
    return cuda


_tensor_type = torch.Tensor.type


class _OnCpu(type):
    """``torch.cuda.FloatTensor`` & co. under compat: build (and recognise) the CPU type of the same dtype."""

    def __call__(cls, *args, **kwargs):
        if not _State.depth:
            return cls.cuda_type(*args, **kwargs)
        _warn_cuda()
        return cls.cpu_type(*args, **kwargs)

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls.cpu_type if _State.depth else cls.cuda_type)


_CUDA_TYPE_NAMES = [n for n in ("FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "ByteTensor",
                                "CharTensor", "ShortTensor", "IntTensor", "LongTensor", "BoolTensor")
                    if hasattr(torch.cuda, n) and hasattr(torch, n)]
CPU_STAND_INS = {n: _OnCpu(n, (), {"cpu_type": getattr(torch, n), "cuda_type": getattr(torch.cuda, n),
                                   "__module__": "torch.cuda", "__doc__": f"torch.{n} under tracecap.legacy.compat"})
                 for n in _CUDA_TYPE_NAMES}
_CUDA_TO_CPU = {getattr(torch.cuda, n): getattr(torch, n) for n in _CUDA_TYPE_NAMES}


def _cpu_type(t):
    if isinstance(t, _OnCpu):
        return t.cpu_type
    if isinstance(t, str) and t.startswith("torch.cuda."):
        return "torch." + t[len("torch.cuda."):]
    try:
        return _CUDA_TO_CPU.get(t)
    except TypeError:  # unhashable: not a type
        return None


@functools.wraps(_tensor_type)
def tensor_type(self, *args, **kwargs):
    if _State.depth:
        if args and _cpu_type(args[0]) is not None:
            _warn_cuda()
            args = (_cpu_type(args[0]),) + args[1:]
        elif _cpu_type(kwargs.get("dtype")) is not None:
            _warn_cuda()
            kwargs = dict(kwargs, dtype=_cpu_type(kwargs["dtype"]))
    return _tensor_type(self, *args, **kwargs)


# ---- the one list of what compat replaces -----------------------------------------------------------------
PATCHES = (
    Patch(F, "interpolate", interpolate, "bilinear upsampling without align_corners; float sizes"),
    *(Patch(torch.Tensor, name, _sized_method(getattr(torch.Tensor, name), name), "float sizes")
      for name in ("view", "reshape", "expand", "repeat")),
    *(Patch(cls, "__init__", _sized_init(cls, names), "float sizes") for cls, names in SIZED_LAYERS),
    Patch(torch.Tensor, "__getitem__", getitem, "x.data[0] on 0-dim tensors"),
    Patch(Variable, "__new__", staticmethod(variable_new), "Variable(x, volatile=True)"),
    Patch(torch.Tensor, "volatile", volatile_property, "Variable(x, volatile=True)"),
    Patch(torch.Tensor, "cuda", _stays_on_cpu(torch.Tensor.cuda), ".cuda() without CUDA", only_without_cuda=True),
    Patch(nn.Module, "cuda", _stays_on_cpu(nn.Module.cuda), ".cuda() without CUDA", only_without_cuda=True),
    Patch(torch.Tensor, "type", tensor_type, "x.type(torch.cuda.FloatTensor) without CUDA", only_without_cuda=True),
    *(Patch(torch.cuda, n, CPU_STAND_INS[n], "torch.cuda.*Tensor without CUDA", only_without_cuda=True)
      for n in _CUDA_TYPE_NAMES),
)

# The replacements call torch for the user's code that called them: the recorder counts an op they run
# from a capture's with-block as run from the block itself (their file is tracecap's, so ops are already
# attributed to the user's frame above them).
for _patch in PATCHES:
    _code = getattr(getattr(_patch.replacement, "__func__", _patch.replacement), "__code__", None)
    if _code is not None:
        recorder.TRANSPARENT.add(id(_code))
