"""The allow-list: the only globals a checkpoint may use, each mapped to a vetted stand-in.

A global named by a pickle resolves to one of three things:

* an entry of ``ALLOWED`` — a plain value (``torch.float32``) or a ``SafeCall`` whose function is
  ours: it checks its arguments and builds the result itself (an OrderedDict, a tensor);
* a refusal, for modules whose only purpose in a pickle is to run code or touch the system
  (``os.system``, ``subprocess.Popen``, ``builtins.eval`` ...): ``CheckpointError`` at once;
* anything else — a ``ClassRef`` placeholder.  "Calling" it yields an inert ``Opaque``.

So nothing named by the file is ever imported or called; the deny-list only makes refusals of
the classic attacks loud and early.  This module holds the table and the Python-builtin entries;
``tensor_rebuild`` and ``numpy_rebuild`` register theirs.
"""
from __future__ import annotations

import collections
import datetime
import decimal
import re

from tracecap.errors import CheckpointError

from .placeholders import ClassRef, Opaque, resolve

ALLOWED: dict = {}

# Modules (by their first dotted component, or in full) that a checkpoint has no business naming.
DENIED_ROOTS = frozenset(
    "os posix nt subprocess sys shutil socket importlib runpy pickle _pickle cPickle marshal ctypes "
    "code codeop pty pdb webbrowser multiprocessing threading _thread signal io _io tempfile glob "
    "functools operator types inspect gc platform urllib urllib2 http ftplib smtplib telnetlib "
    "asyncio timeit trace cProfile profile commands popen2 builtins dill cloudpickle".split())
DENIED_MODULES = frozenset(
    "torch.hub torch.serialization torch.jit torch.ops torch._C torch.utils.cpp_extension "
    "numpy.lib.npyio numpy.testing".split())

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class SafeCall:
    """An allowed callable: ``fn(policy, args, kwargs, new)`` is tracecap's own implementation."""

    __slots__ = ("path", "fn")

    def __init__(self, path, fn):
        self.path = path
        self.fn = fn

    def __repr__(self):
        return f"<{self.path}>"


class Marker:
    """An allowed non-callable global used only as an argument (``builtins.object``, ``torch.Tensor``)."""

    __slots__ = ("path", "value")

    def __init__(self, path, value=None):
        self.path = path
        self.value = value

    def __repr__(self):
        return f"<{self.path}>"


def allow(*paths):
    """Register a handler under one or more ``module.name`` paths."""
    def register(fn):
        call = SafeCall(paths[0], fn)
        for path in paths:
            ALLOWED[_split(path)] = call
        return call
    return register


def allow_value(path, value):
    ALLOWED[_split(path)] = value
    return value


def _split(path):
    module, _, name = path.rpartition(".")
    return module, name


def resolve_global(module: str, name: str, unknown: dict):
    """The stand-in for global ``module.name`` (see module docstring)."""
    entry = ALLOWED.get((module, name))
    if entry is not None:
        return entry
    if not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(name):
        raise CheckpointError(f"pickle names a malformed global {module!r}.{name!r}")
    if module.split(".")[0] in DENIED_ROOTS or any(
            module == m or module.startswith(m + ".") for m in DENIED_MODULES):
        raise CheckpointError(
            f"refusing to load: the pickle refers to {module}.{name}, which can run code or touch the "
            f"system. Nothing from the file was executed. Only if you trust the file's author, "
            f"load it with trust=True")
    path = f"{module}.{name}"
    ref = unknown.get(path)
    if ref is None:
        ref = unknown[path] = ClassRef(module, name)
    return ref


def arity(args, lo, hi, path):
    if not lo <= len(args) <= hi:
        raise CheckpointError(f"{path} called with {len(args)} arguments (expects {lo}..{hi})")
    return [resolve(a) for a in args] + [None] * (hi - len(args))


def is_real_container(value):
    return type(value) in (list, tuple, dict, set, frozenset, collections.OrderedDict)


def _pairs(value, path):
    if isinstance(value, dict):
        return list(value.items())
    if type(value) not in (list, tuple):
        raise CheckpointError(f"{path} expects a mapping or a list of pairs, got {type(value).__name__}")
    out = []
    for item in value:
        if type(item) not in (list, tuple) or len(item) != 2:
            raise CheckpointError(f"{path} expects (key, value) pairs")
        out.append((item[0], item[1]))
    return out


# -- builtins -------------------------------------------------------------------------------------
OBJECT = allow_value("builtins.object", Marker("builtins.object", object))


@allow("builtins.dict")
def _dict(policy, args, kwargs, new):
    (src,) = arity(args, 0, 1, "dict")
    d = {} if src is None or new else dict(_pairs(src, "dict"))
    d.update(kwargs or {})
    return d


def _sequence_type(kind, path):
    def make(policy, args, kwargs, new):
        (src,) = arity(args, 0, 1, path)
        if src is None or new:
            return kind()
        if not is_real_container(src):
            raise CheckpointError(f"{path} expects a list, tuple or set, got {type(src).__name__}")
        return kind(src)
    return make


for _kind in (list, tuple, set, frozenset):
    allow(f"builtins.{_kind.__name__}")(_sequence_type(_kind, f"builtins.{_kind.__name__}"))


@allow("builtins.bool")
def _bool(policy, args, kwargs, new):
    (v,) = arity(args, 0, 1, "bool")
    if v is not None and type(v) not in (bool, int):
        raise CheckpointError("bool() expects an int")
    return bool(v)


@allow("builtins.int")
def _int(policy, args, kwargs, new):
    v, base = arity(args, 0, 2, "int")
    if v is None:
        return 0
    if base is not None:
        if type(v) is not str or type(base) is not int:
            raise CheckpointError("int(text, base) expects text and an int")
        return int(v, base)
    if type(v) not in (int, bool, float, str):
        raise CheckpointError(f"int() of {type(v).__name__} is not allowed")
    return int(v)


@allow("builtins.float")
def _float(policy, args, kwargs, new):
    (v,) = arity(args, 0, 1, "float")
    if v is not None and type(v) not in (int, bool, float, str):
        raise CheckpointError(f"float() of {type(v).__name__} is not allowed")
    return float(v or 0)


@allow("builtins.complex")
def _complex(policy, args, kwargs, new):
    re_, im = arity(args, 0, 2, "complex")
    for v in (re_, im):
        if v is not None and type(v) not in (int, float, bool) and not (type(v) is str and im is None):
            raise CheckpointError("complex() expects numbers")
    return complex(re_ or 0, im or 0)


def _bytes_like(kind, path):
    def make(policy, args, kwargs, new):
        src, encoding, errors = arity(args, 0, 3, path)
        if src is None:
            return kind()
        if type(src) is str:
            if encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
                raise CheckpointError(f"{path} with encoding {encoding!r} is not allowed")
            return kind(src, encoding)
        if type(src) in (bytes, bytearray):
            return kind(src)
        if type(src) is list and all(type(b) is int and 0 <= b < 256 for b in src):
            return kind(src)
        raise CheckpointError(f"{path} expects bytes, text with an encoding, or a list of byte values")
    return make


allow("builtins.bytes")(_bytes_like(bytes, "builtins.bytes"))
allow("builtins.bytearray")(_bytes_like(bytearray, "builtins.bytearray"))


@allow("builtins.str")
def _str(policy, args, kwargs, new):
    src, encoding, errors = arity(args, 0, 3, "str")
    if src is None:
        return ""
    if type(src) is str:
        return src
    if type(src) is bytes and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        return src.decode(encoding, "replace")
    raise CheckpointError("str() expects text or bytes with an encoding")


@allow("builtins.slice")
def _slice(policy, args, kwargs, new):
    vals = arity(args, 1, 3, "slice")
    if any(v is not None and type(v) is not int for v in vals):
        raise CheckpointError("slice() expects ints or None")
    return slice(*vals[: len(args)])


@allow("_codecs.encode")
def _codecs_encode(policy, args, kwargs, new):
    """Python 3 writes ``bytes`` under protocol 2 as ``_codecs.encode(text, 'latin1')``."""
    return _bytes_like(bytes, "_codecs.encode")(policy, args, kwargs, False)


# -- copyreg: how protocols 0/1 spell "make an instance of cls" --------------------------------------
@allow("copyreg._reconstructor")
def _reconstructor(policy, args, kwargs, new):
    cls, base, state = arity(args, 3, 3, "copyreg._reconstructor")
    return policy.call(cls, (), None, True)


@allow("copyreg.__newobj__")
def _newobj(policy, args, kwargs, new):
    if not args:
        raise CheckpointError("copyreg.__newobj__ needs a class")
    return policy.call(args[0], tuple(args[1:]), None, True)


@allow("copyreg.__newobj_ex__")
def _newobj_ex(policy, args, kwargs, new):
    cls, cargs, ckwargs = arity(args, 3, 3, "copyreg.__newobj_ex__")
    if type(cargs) is not tuple or not isinstance(ckwargs, dict):
        raise CheckpointError("copyreg.__newobj_ex__ expects (cls, tuple, dict)")
    return policy.call(cls, cargs, ckwargs, True)


# -- collections ------------------------------------------------------------------------------------
@allow("collections.OrderedDict")
def _ordered_dict(policy, args, kwargs, new):
    (src,) = arity(args, 0, 1, "OrderedDict")
    return collections.OrderedDict() if src is None or new else collections.OrderedDict(_pairs(src, "OrderedDict"))


_FACTORIES = {"builtins.list": list, "builtins.dict": dict, "builtins.int": int, "builtins.float": float,
              "builtins.set": set, "builtins.str": str, "collections.OrderedDict": collections.OrderedDict}


@allow("collections.defaultdict")
def _defaultdict(policy, args, kwargs, new):
    factory, src = arity(args, 0, 2, "defaultdict")
    # A factory outside the list would run on every missing key; keep the data, drop the factory.
    real = _FACTORIES.get(factory.path) if isinstance(factory, SafeCall) else None
    d = collections.defaultdict(real)
    if src is not None and not new:
        d.update(_pairs(src, "defaultdict"))
    return d


@allow("collections.Counter")
def _counter(policy, args, kwargs, new):
    (src,) = arity(args, 0, 1, "Counter")
    c = collections.Counter()
    if src is not None and not new:
        c.update(dict(_pairs(src, "Counter")))
    return c


# -- small value types ------------------------------------------------------------------------------
def _plain_args(kind, path):
    def make(policy, args, kwargs, new):
        args = [resolve(a) for a in args]
        if any(type(a) not in (int, float, bool, str, bytes, type(None), datetime.timezone,
                               datetime.timedelta) for a in args):
            raise CheckpointError(f"{path} expects plain numbers, text or bytes")
        return kind(*args)
    return make


for _kind in (datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone):
    allow(f"datetime.{_kind.__name__}")(_plain_args(_kind, f"datetime.{_kind.__name__}"))
allow("decimal.Decimal")(_plain_args(decimal.Decimal, "decimal.Decimal"))


def describe_callee(func) -> str:
    if isinstance(func, (SafeCall, Marker, ClassRef)):
        return repr(func)
    if isinstance(func, Opaque):
        return f"an instance of {func.class_path}"
    return f"a {type(func).__name__} value"
