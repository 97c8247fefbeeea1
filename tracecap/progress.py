"""Progress of long work, told on stderr: numbered steps, and ``progress(done, total)`` callables.

On a terminal a bar is drawn by ``rich`` or ``tqdm`` when one is installed (both optional, imported
only when a bar is wanted); otherwise a few plain lines (at each quarter) say how far it got.
``quiet`` silences everything. Other stages take a ``progress=`` callable made by ``reporter``::

    tick = progress.reporter("writing weights")     # tick(done, total), called as work advances
"""
from __future__ import annotations

import contextlib
import sys


class Steps:
    """``steps("capturing ...")`` prints ``[2/4] capturing ...``; ``steps.note(text)`` an indented detail."""

    def __init__(self, total, quiet=False, stream=None):
        self.total, self.quiet, self.done = total, quiet, 0
        self._stream = stream

    def __call__(self, text):
        self.done += 1
        self._print(f"[{self.done}/{self.total}] {text}")

    def note(self, text):
        self._print(f"      {text}")

    def _print(self, line):
        if not self.quiet:
            print(line, file=self._stream or sys.stderr, flush=True)


def _silent(done, total):
    return None


class _Lines:
    """No terminal (or no bar library): one line each time another quarter of the work is done."""

    def __init__(self, label, stream):
        self.label, self.stream, self.shown = label, stream, 0

    def update(self, done, total):
        quarter = 4 * done // total if total else 4
        if quarter > self.shown:
            self.shown = quarter
            print(f"      {self.label}: {done}/{total}", file=self.stream, flush=True)

    def close(self):
        pass


class _Tqdm:
    def __init__(self, label, stream, total):
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=label, file=stream, leave=False)

    def update(self, done, total):
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self):
        self.bar.close()


class _Rich:
    def __init__(self, label, stream, total):
        from rich.console import Console
        from rich.progress import Progress
        self.progress = Progress(console=Console(file=stream), transient=True)
        self.task = self.progress.add_task(label, total=total)
        self.progress.start()

    def update(self, done, total):
        self.progress.update(self.task, completed=done, total=total)

    def close(self):
        self.progress.stop()


def _bar(label, stream, total):
    """A bar on a terminal when rich or tqdm is installed, else plain lines."""
    if getattr(stream, "isatty", lambda: False)():
        for kind in (_Rich, _Tqdm):
            try:
                return kind(label, stream, total)
            except ImportError:
                continue
    return _Lines(label, stream)


class _Reporter:
    def __init__(self, label, stream, min_total):
        self.label, self.stream, self.bar, self.min_total = label, stream, None, min_total

    def __call__(self, done, total):
        if total < self.min_total:
            return
        if self.bar is None:
            self.bar = _bar(self.label, self.stream or sys.stderr, total)
        self.bar.update(min(done, total), total)
        if done >= total:
            self.bar.close()
            self.bar = None


def reporter(label, quiet=False, stream=None, min_total=0):
    """A ``progress(done, total)`` callable for ``label`` (silent under ``quiet``, and for work whose total is
    below ``min_total``: short work needs no bar); the bar closes at done == total."""
    return _silent if quiet else _Reporter(label, stream, min_total)


# Weights files (written or read) below this size take well under a second: no progress for them.
BIG_FILE_BYTES = 64 << 20


# Models with fewer modules capture in a blink: no progress for them.
BIG_MODEL_MODULES = 100


@contextlib.contextmanager
def modules_entered(model, quiet=False, stream=None):
    """Tell the progress of a forward pass of a big model by the modules it enters (the top two levels of
    the module tree, through forward pre-hooks removed on exit). Small models and ``quiet``: no hooks."""
    modules = [m for name, m in model.named_modules() if name and name.count(".") <= 1] \
        if not quiet and hasattr(model, "named_modules") else []
    if len(modules) < 2 or sum(1 for _ in model.modules()) < BIG_MODEL_MODULES:
        yield
        return
    tick, seen = reporter("capturing: modules entered", stream=stream), set()

    def entered(module, args):
        if id(module) not in seen:
            seen.add(id(module))
            tick(len(seen), len(modules))

    handles = [m.register_forward_pre_hook(entered) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        if len(seen) < len(modules):
            tick(len(modules), len(modules))
