"""``tracecap.capture()``: the context manager users write their forward pass in."""
from __future__ import annotations

import sys
import threading
import warnings

from tracecap import builder, collector, passes
from tracecap.errors import CaptureError
from tracecap.recorder import Recorder
from tracecap.surfacer import Surfacer

_active = threading.local()


class capture:
    """Record the ops run by this thread inside the ``with`` block.

    ``cap.graph`` is the cleaned graph with inputs/outputs inferred;
    ``cap.build(inputs=..., outputs=...)`` names them explicitly.
    ``legacy="0.3"`` runs the block under ``tracecap.legacy.compat("0.3")`` (old semantics, see there).
    """

    def __init__(self, legacy=None):
        if legacy is not None:
            from tracecap.legacy.compat import compat
            legacy = compat(legacy)  # an unknown version fails here, before anything is installed
        self._compat = legacy
        self._recorder = None
        self._mode = None
        self._graph = None
        self._error = None
        self._finished = False

    def __enter__(self):
        if getattr(_active, "capture", None) is not None:
            raise CaptureError("capture() is already active in this thread; nested captures are not supported "
                               "(end the outer `with tracecap.capture()` block first)")
        # Each step is undone if a later one fails (as bdb.runcall does with its tracer), so a
        # failed enter never leaves this thread marked active, a mode pushed or a tracer set.
        if self._compat is not None:
            self._compat.__enter__()  # first: its mode must sit below the surfacer
        _active.capture = self
        try:
            self._recorder = Recorder(sys._getframe(1))
            self._mode = Surfacer()
            self._mode.__enter__()
            try:
                self._recorder.install()   # last: nothing of ours runs traced after this
            except BaseException:
                self._mode.__exit__(None, None, None)
                raise
        except BaseException:
            _active.capture = None
            if self._compat is not None:
                self._compat.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self._recorder.check_owner()  # another thread must not stop this one's tracer
        try:
            intact = self._recorder.uninstall()  # first: stop tracing before anything else runs
        finally:
            try:
                self._mode.__exit__(None, None, None)
            finally:
                _active.capture = None
                if self._compat is not None:
                    self._compat.__exit__(None, None, None)
        if not intact:
            warnings.warn("tracecap: the trace function was replaced during capture (a debugger or coverage "
                          "started inside the block?); the recording may be incomplete", RuntimeWarning, stacklevel=2)
        if exc_type is not None:
            self._error = exc
            return False
        self._finished = True
        rec = self._recorder
        if rec.internal_errors:
            raise CaptureError("tracecap's recorder failed internally: " + "; ".join(rec.internal_errors[:3]))
        if rec.training_modules:
            warnings.warn(f"tracecap: {', '.join(rec.training_modules)} captured in training mode; dropout and "
                          f"batch-norm statistics behave differently than in deployment - call model.eval() first",
                          UserWarning, stacklevel=2)
        return False

    @property
    def recorder(self):
        return self._recorder

    def build(self, inputs=None, outputs=None, clean=True):
        """Build a Graph; explicit ``inputs``/``outputs`` are tensors (or lists/tuples/dicts of them)."""
        if not self._finished:
            why = f"the block raised {type(self._error).__name__}" if self._error is not None else "the block has not finished"
            raise CaptureError(f"no graph: {why}")
        with collector.paused():
            graph = builder.build_graph(self._recorder, inputs, outputs)
            if clean:
                passes.cleanup(graph)
            return graph.assign_names()

    @property
    def graph(self):
        if self._graph is None:
            self._graph = self.build()
        return self._graph
