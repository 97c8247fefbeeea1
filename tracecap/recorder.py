"""The recorder: a sys.settrace hook that writes down every op a forward pass runs.

Three layers, as in bdb.py:

* mechanics - ``install``/``uninstall`` put the trace function in place, chained
  to any tracer that was already there (debugger, coverage), and restore it;
* policy    - which frames matter: the surfacer's op frame, ``Module._call_impl``
  (a scope), and calls made directly from the ``with`` block (the outermost calls);
* hooks     - ``_on_*`` methods that append events.

The global trace function only sees ``'call'`` events; it returns a local tracer
just for the few frames whose ``'return'`` it needs, with line events switched
off, and ``None`` for everything else (cheap).

Tensor identity is weak (design.md section 4). Events hold ``TensorRef`` records, not tensors: one
per tensor object, with a capture-unique ``key`` (``id()`` is unique among live objects only) and
what the builder reads of it. An op's result computed from the graph's inputs (an activation) is
held by a weak reference only, so it dies when the model drops it, as without capture; its weakref
callback retires its ``id()``, so a later tensor that reuses the id gets a new ref and is never
linked to the dead one's blob, and stamps the time of death, so a tensor that later takes the dead
one's buffer is not taken for its alias either. Held strongly, because the builder, replay or verify
read them after the forward:

* parameters, buffers and tensor attributes of the modules called (the graph's weights);
* arguments and results of the calls made from the ``with`` block (graph inputs and outputs);
* every tensor first seen as an op's input that no recorded op produced (an input, a parameter, an
  alias or a constant the graph needs the value of);
* results not computed from the inputs (constants: factories and ops on constants, whose values
  the writer needs; factories also keep a copy as created);
* views (and through them their bases): following writes through views reads their live layout.
"""
from __future__ import annotations

import dis
import os
import sys
import sysconfig
import threading
import weakref

import torch

from tracecap.graph import Quantization, map_structure
from tracecap.ops.categories import SHAPE_ONLY_ARGS
from tracecap.surfacer import OP_CODE

_MODULE_CALL_CODE = torch.nn.Module._call_impl.__code__
# modules whose forward differs between train() and eval(): worth a warning when captured in training mode
_TRAIN_SENSITIVE = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd,
                    torch.nn.modules.instancenorm._InstanceNorm)
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB_DIRS = tuple({os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")})
_SITE_MARKERS = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)

# ids of the code of tracecap functions that call torch for the user's code that called them (the
# replacements tracecap.legacy.compat installs, e.g. Tensor.view): what they run from a capture's
# with-block counts as run from the block itself
TRANSPARENT = set()

# per-file verdicts: "torch"/"ours" (skip upward to the user's caller), "stdlib" (an op called from here is
# not the user's), "user"
_FILE_KIND = {}


def _file_kind(filename):
    kind = _FILE_KIND.get(filename)
    if kind is None:
        path = os.path.realpath(filename) if not filename.startswith("<") else filename
        if path.startswith(_TORCH_DIR) or filename.startswith(_TORCH_DIR):
            kind = "torch"
        elif path.startswith(_OWN_DIR):
            kind = "ours"
        elif path.startswith(_STDLIB_DIRS) and not any(m in path for m in _SITE_MARKERS):
            kind = "stdlib"
        else:
            kind = "user"
        _FILE_KIND[filename] = kind
    return kind


def _tensors(obj, out):
    """Append every tensor inside obj (lists/tuples/dicts, any depth) to out."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


_CONTAINERS = (list, tuple, dict)
_Tensor = torch.Tensor
# Reading a tensor's shape, dtype or version from a trace hook can go through torch's Python
# __torch_function__ dispatch (measured: up to 1.8 us a read on a Tensor method's result, 0.1 us
# without): the hooks read tensors with torch functions disabled (they run no user code)
_plain_reads = torch._C.DisableTorchFunction
# ops whose result takes only the shape/dtype of an input (ops.SHAPE_ONLY_ARGS, by the function's own
# name: ``zero_``/``fill_`` are spelt in place): a constant even when that input is an activation, so the
# result is held
_SHAPE_ONLY = frozenset(name for op in SHAPE_ONLY_ARGS for name in (op, op + "_"))


class TensorRef:
    """One tensor object seen during capture: a capture-unique ``key`` and what the builder reads.

    ``held`` is the tensor itself when it must survive the forward, else None and ``weak`` refers to
    it; a weakly referenced tensor's shape, dtype, storage pointer, strides and quantization are
    recorded when first seen, and read live while it is alive (as for a held one). ``died`` is the
    number of op calls started before it died (None while it lives): it lived for events below that.
    """

    __slots__ = ("key", "tid", "held", "weak", "derived", "died", "_shape", "_dtype", "_ptr", "_stride", "_quant",
                 "_rec")

    def __init__(self, rec, t, hold, derived):
        rec._keys += 1
        self.key = rec._keys
        self.tid = id(t)
        self.derived = derived
        self.died = None
        if hold:
            self.held, self.weak = t, None
        else:
            self.held, self._rec = None, rec
            self.weak = weakref.ref(t, self._gone)
            self._shape, self._dtype = t.shape, t.dtype
            try:
                self._ptr, self._stride = t.data_ptr(), t.stride()
            except Exception:  # e.g. sparse or meta tensors: no aliasing by storage
                self._ptr = None
            self._quant = Quantization.of(t) if t.is_quantized else None
        rec._live[self.tid] = self

    def _gone(self, _):
        rec = self._rec
        self.died = rec._started
        if rec._live.get(self.tid) is self:
            del rec._live[self.tid]

    @property
    def tensor(self):
        """The tensor, or None once a weakly held one died."""
        return self.held if self.held is not None else self.weak()

    @property
    def shape(self):
        t = self.tensor
        return self._shape if t is None else t.shape

    @property
    def dtype(self):
        t = self.tensor
        return self._dtype if t is None else t.dtype

    @property
    def quant(self):
        t = self.tensor
        return self._quant if t is None else Quantization.of(t)

    def alias_key(self):
        t = self.tensor
        if t is not None:
            return alias_key(t)
        return None if self._ptr is None else (self._ptr, tuple(self._shape), tuple(self._stride), self._dtype)

    def alive_at(self, index):
        """Was the tensor alive when event ``index`` was called?"""
        return self.died is None or self.died > index

    def __repr__(self):
        state = "held" if self.held is not None else ("dead" if self.weak() is None else "weak")
        return f"<TensorRef {self.key} {state} {tuple(self.shape)}>"


def alias_key(t):
    """Two tensor objects with this key show the same values (same storage, offset, shape, strides)."""
    try:
        return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
    except Exception:  # e.g. sparse or meta tensors: no aliasing by storage
        return None


def _snapshot(obj):
    """Copy containers so a list appended to after the call (DenseNet's feature list) keeps its value."""
    return map_structure(obj, _same)


def _same(obj):
    return obj


def _version(t):
    try:
        return t._version
    except RuntimeError:  # inference tensors carry no version counter
        return None


def _versions(tensors):
    try:
        return [t._version for t in tensors]
    except RuntimeError:  # some inference tensor among them: ask one by one
        return [_version(t) for t in tensors]


class OpEvent:
    """One op call and its result, with what the builder needs to link it."""

    __slots__ = (
        "index",     # position in execution order
        "func",      # the torch callable that ran
        "args",      # positional args (containers copied at call time, tensors as TensorRefs)
        "kwargs",    # keyword args (the same)
        "inputs",    # TensorRefs of the tensors among args/kwargs, in order
        "in_versions",   # their _version before the call
        "after_versions",  # their _version after the call (a bump = written in place)
        "outputs",   # TensorRefs of the tensors in the result, in order
        "out_info",  # (shape, dtype, _version) for each output at return
        "values",    # for factories only: copies of the outputs as created
        "scope",     # module path of the innermost module running ("" at top level)
        "call",      # which call of a module (a counter), to tell reused modules' calls apart
        "module",    # class name of that module (or None)
        "where",     # (filename, line) of the user's code that made the call; .source formats it
        "outer",     # True when called directly from the with-block
    )

    @property
    def source(self):
        return f"{self.where[0]}:{self.where[1]}"

    def __repr__(self):
        return f"<OpEvent #{self.index} {getattr(self.func, '__name__', self.func)} @ {self.source}>"


class OuterCall:
    """A call made directly from the ``with`` block: its arguments name the graph inputs."""

    __slots__ = ("frame_name", "arguments", "result", "done", "is_module")

    def __init__(self, frame_name, arguments, is_module):
        self.frame_name = frame_name
        self.arguments = arguments  # list of (path, value)
        self.result = None
        self.done = False
        self.is_module = is_module


class Recorder:
    """Collects OpEvents and OuterCalls for one thread, between install() and uninstall()."""

    def __init__(self, block_frame, keep_activations=False):
        self.block_frame = block_frame
        self.keep_activations = keep_activations  # hold every result too (for tools reading them later)
        self.thread = threading.get_ident()
        self.events = []
        self.outer_calls = []
        self.param_names = {}      # TensorRef.key of a param/buffer -> dotted name
        self.module_names = {}     # id(module) -> dotted path
        self.training_modules = []
        self.internal_errors = []
        self.block_names = {}      # TensorRef.key -> the tensor's variable name in the with-block (set on exit)
        self._live = {}            # id(tensor) -> its TensorRef, while the tensor lives
        self._keys = 0             # TensorRef keys handed out
        self._started = 0          # op calls recorded so far (the clock of TensorRef.died)
        self._outer_ids = set()    # id() of tensors passed to calls from the block (held by those calls)
        self._scopes = []          # stack of (path, class name, call counter)
        self._calls = 0
        self._registered = set()   # ids of modules whose parameters are already named
        self._pending = []         # OpEvents awaiting their 'return'
        self._outer_pending = []   # OuterCalls awaiting their 'return'
        self._prev = None
        self._installed = None
        self._lines_off = True

    # ---- mechanics -------------------------------------------------------------------
    def install(self):
        self._prev = sys.gettrace()
        self._installed = self._dispatch if self._prev is None else self._chained
        self._lines_off = self._prev is None  # a chained tracer (coverage, pdb) may need line events
        sys.settrace(self._installed)

    def check_owner(self):
        """Refuse to be stopped from a thread other than the one that installed the tracer
        (``sys.settrace`` there would change that thread's tracer, not ours) - as coverage does."""
        if threading.get_ident() != self.thread:
            from tracecap.errors import CaptureError
            raise CaptureError("capture() must be exited on the thread that entered it "
                               f"(entered on thread {self.thread}, exited on {threading.get_ident()})")

    def uninstall(self):
        """Restore the previous tracer; report if someone replaced ours meanwhile."""
        current = sys.gettrace()
        sys.settrace(self._prev)
        # names the with-block gives its tensors: `y = torch.relu(x)` makes an input called "x"
        for k, v in self.block_frame.f_locals.items():
            ref = self.seen(v) if isinstance(v, torch.Tensor) else None
            if ref is not None:
                self.block_names[ref.key] = k
        return current is self._installed or current == self._installed

    # ---- tensor identity -----------------------------------------------------------------
    def ref_of(self, t):
        """The TensorRef of live tensor ``t`` (a held one is made for a tensor no event saw)."""
        ref = self._live.get(id(t))
        return ref if ref is not None else TensorRef(self, t, True, False)

    def seen(self, t):
        """The TensorRef of live tensor ``t`` if the capture saw it, else None."""
        return self._live.get(id(t))

    def _input_ref(self, t, outer):
        """The TensorRef of a tensor an op reads. First seen here, no recorded op made it: a source
        (input, parameter, alias or constant), held; derived from the inputs when it is one of them."""
        ref = self._live.get(id(t))
        if ref is None:
            ref = TensorRef(self, t, True, outer or id(t) in self._outer_ids)
        return ref

    def _convert(self, obj, outer, tensors, refs):
        """obj with its tensors replaced by TensorRefs (containers copied); collects both, in order."""
        if isinstance(obj, _Tensor):
            ref = self._input_ref(obj, outer)
            tensors.append(obj)
            refs.append(ref)
            return ref
        return map_structure(obj, lambda o: self._convert(o, outer, tensors, refs) if isinstance(o, _Tensor) else o)

    def _convert_args(self, args, outer, tensors, refs):
        """Fast path of _convert for an op's positional args: flat, most of the time."""
        out = []
        for a in args:
            if isinstance(a, _Tensor):
                ref = self._live.get(id(a)) or self._input_ref(a, outer)
                tensors.append(a)
                refs.append(ref)
                out.append(ref)
            elif isinstance(a, _CONTAINERS):
                del tensors[:], refs[:]
                return self._convert(args, outer, tensors, refs)
            else:
                out.append(a)
        return tuple(out)

    def _output_refs(self, outs, derived):
        """TensorRefs of an op's results: a new activation weakly, a constant or a view strongly."""
        refs = []
        live = self._live
        for t in outs:
            ref = live.get(id(t))
            if ref is None:
                ref = TensorRef(self, t, not derived or self.keep_activations or t._base is not None, derived)
            elif derived:
                ref.derived = True  # e.g. a constant written in place from the inputs
            refs.append(ref)
        return refs

    def _chained(self, frame, event, arg):
        theirs = self._prev(frame, event, arg)
        if sys.gettrace() is not self._installed:
            # coverage's C tracer, when called from Python, re-installs itself as the
            # thread's trace function; put the chain back so both keep seeing calls
            sys.settrace(self._installed)
        ours = self._dispatch(frame, event, arg)
        if ours is None:
            return theirs
        if theirs is None:
            return ours
        return _Both(ours, theirs)

    # ---- policy ------------------------------------------------------------------------
    def _dispatch(self, frame, event, arg):
        code = frame.f_code
        try:
            if code is OP_CODE:
                return self._on_op_call(frame)
            if code is _MODULE_CALL_CODE:
                return self._on_module_call(frame)
            back = frame.f_back
            if (back is self.block_frame or back is not None and back.f_back is self.block_frame and
                    id(back.f_code) in TRANSPARENT) and _file_kind(code.co_filename) != "ours":
                return self._on_outer_call(frame)
        except Exception as exc:  # never let a recorder bug break the user's forward
            self.internal_errors.append(repr(exc))
        return None

    def _from_block(self, frame):
        """Called by the with-block itself (directly, or through a TRANSPARENT tracecap function)."""
        back = frame.f_back
        return back is self.block_frame or back is not None and back.f_back is self.block_frame and \
            id(back.f_code) in TRANSPARENT

    def _user_frame(self, frame):
        """The frame an op was called from on the user's behalf: the first caller outside torch
        and tracecap, or the with-block itself (``tracecap convert`` runs the model from its own
        block; tracecap's compat wrappers call ops for the user's code that called them).
        None when the stdlib called the op."""
        f = frame.f_back
        block = self.block_frame
        while f is not None:
            if f is block:
                return f
            kind = _file_kind(f.f_code.co_filename)
            if kind == "user":
                return f
            if kind == "stdlib":
                return None
            f = f.f_back
        return None

    # ---- hooks ---------------------------------------------------------------------------
    def _on_op_call(self, frame):
        user = self._user_frame(frame)
        if user is None:
            return None
        loc = frame.f_locals
        ev = OpEvent()
        ev.index = self._started
        self._started += 1
        ev.func = loc["func"]
        ev.outer = outer = self._from_block(frame)
        tensors, refs = [], []   # the tensors themselves stay referenced only until the op returns
        with _plain_reads():
            ev.args = self._convert_args(loc.get("args") or (), outer, tensors, refs)
            kwargs = loc.get("kwargs")
            ev.kwargs = self._convert(kwargs, outer, tensors, refs) if kwargs else {}
            ev.in_versions = _versions(tensors)
        ev.inputs = refs
        if self._scopes:
            ev.scope, ev.module, ev.call = self._scopes[-1]
        else:
            ev.scope, ev.module, ev.call = "", None, 0
        ev.where = (user.f_code.co_filename, user.f_lineno)
        if self._lines_off:
            frame.f_trace_lines = False
        self._pending.append((ev, tensors))
        return self._op_local

    def _op_local(self, frame, event, arg):
        if event == "return":
            try:
                ev, tensors = self._pending.pop()
                outs = _tensors(arg, [])
                derived = False
                for r in ev.inputs:
                    if r.derived:
                        derived = getattr(ev.func, "__name__", None) not in _SHAPE_ONLY
                        break
                with _plain_reads():
                    ev.after_versions = _versions(tensors)
                    # a factory (zeros, arange...): keep its value as created, in case it is later written in place
                    ev.values = [t.detach().clone() for t in outs] if not tensors else None
                    ev.out_info = list(zip([t.shape for t in outs], [t.dtype for t in outs], _versions(outs))) \
                        if len(outs) != 1 else [(outs[0].shape, outs[0].dtype, _version(outs[0]))]
                    ev.outputs = self._output_refs(outs, derived)
                if ev.outer:
                    self._finish_outer(arg)
                self.events.append(ev)
            except Exception as exc:
                self.internal_errors.append(repr(exc))
        return self._op_local

    def _on_module_call(self, frame):
        module = frame.f_locals.get("self")
        if not isinstance(module, torch.nn.Module):
            return None
        key = id(module)
        if not self._scopes and key not in self.module_names:
            for name, m in module.named_modules():
                self.module_names.setdefault(id(m), name)
            if module.training and any(isinstance(m, _TRAIN_SENSITIVE) for m in module.modules()):
                self.training_modules.append(type(module).__name__)
        path = self.module_names.get(key)
        if path is None:  # a module outside the root's tree: name it under the current scope
            parent = self._scopes[-1][0] if self._scopes else ""
            path = f"{parent}.{type(module).__name__}" if parent else type(module).__name__
            self.module_names[key] = path
        if key not in self._registered:  # parameters/buffers get their dotted names once per module
            self._registered.add(key)
            prefix = path + "." if path else ""
            tensor_attrs = {k: v for k, v in vars(module).items() if isinstance(v, torch.Tensor)}
            for store in (module._parameters, module._buffers, tensor_attrs):  # plain tensor attributes too
                for pname, p in store.items():
                    if p is not None:
                        self.param_names.setdefault(self.ref_of(p).key, prefix + pname)
        self._calls += 1
        self._scopes.append((path, type(module).__name__, self._calls))
        if self._lines_off:
            frame.f_trace_lines = False
        return self._scope_local

    def _scope_local(self, frame, event, arg):
        if event == "return" and self._scopes:
            self._scopes.pop()
        return self._scope_local

    def _on_outer_call(self, frame):
        code = frame.f_code
        if code.co_flags & _GENERATOR_FLAGS and _is_resume(frame):
            return None  # a generator or coroutine resumed: its call was recorded when it started
        loc = frame.f_locals
        module = loc.get("self")
        is_module = isinstance(module, torch.nn.Module) and code.co_name in ("_wrapped_call_impl", "__call__", "_call_impl")
        if is_module:
            arguments = _bind_forward(module, loc.get("args", ()), loc.get("kwargs", {}))
        else:
            n = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)
            arguments = [(name, loc[name]) for name in code.co_varnames[:n] if name in loc and name != "self"]
        arguments = _snapshot(arguments)
        self._outer_ids.update(id(t) for t in _tensors(arguments, []))
        self.outer_calls.append(OuterCall(code.co_name, arguments, is_module))
        self._outer_pending.append(self.outer_calls[-1])
        if self._lines_off:
            frame.f_trace_lines = False
        return self._outer_local

    def _outer_local(self, frame, event, arg):
        if event == "return":
            self._finish_outer(arg)
            # A generator's frame keeps its f_trace across a yield, and a tracer returning None
            # at the resume does not clear it: drop it here, so a resume's 'return' is not taken
            # for another call (resumes are skipped in _on_outer_call).
            frame.f_trace = None
            return None
        return self._outer_local

    def _finish_outer(self, result):
        if self._outer_pending:
            call = self._outer_pending.pop()
            call.result = result
            call.done = True
        else:  # an op called straight from the block: an outer call of its own
            call = OuterCall("op", [], False)
            call.result, call.done = result, True
            self.outer_calls.append(call)


# CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR
_GENERATOR_FLAGS = 0x20 | 0x80 | 0x100 | 0x200
_RESUME = dis.opmap.get("RESUME")  # 3.11+: a frame starts at RESUME 0, resumes at RESUME 1-3


def _is_resume(frame):
    """True when a generator/coroutine frame's 'call' event is a resume, not its start
    (the test bdb and coverage make: before 3.11 a fresh frame has f_lasti < 0)."""
    if _RESUME is None:
        return frame.f_lasti >= 0
    code, i = frame.f_code.co_code, frame.f_lasti
    return code[i] == _RESUME and code[i + 1] & 3 != 0


def _bind_forward(module, args, kwargs):
    """Name a module call's arguments after its forward() parameters (x, images, ...)."""
    import inspect
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        return list(bound.arguments.items())
    except (TypeError, ValueError):
        return [(f"input{i}", a) for i, a in enumerate(args)] + list(kwargs.items())


class _Both:
    """Local tracer for frames both we and a previous tracer follow."""

    __slots__ = ("ours", "theirs")

    def __init__(self, ours, theirs):
        self.ours, self.theirs = ours, theirs

    def __call__(self, frame, event, arg):
        if self.theirs is not None:
            self.theirs = self.theirs(frame, event, arg)
        if self.ours is not None:
            self.ours = self.ours(frame, event, arg)
        return self if (self.ours is not None or self.theirs is not None) else None
