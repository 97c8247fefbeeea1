"""Keep Python's cyclic garbage collector from walking the whole heap while tracecap works.

A process that has imported torch holds ~200,000 objects the collector tracks. tracecap's own
work (the capture's events, the graph, the Caffe messages) allocates tens of thousands of objects
that live on, and every so many survivors CPython runs a full collection that walks all of them:
~90 ms in a fresh process converting ResNet-50, a third of the conversion. None of those old
objects become garbage because of tracecap, so while it works they are set aside (``gc.freeze``)
and collections walk only what was made since; afterwards they are handed back (``gc.unfreeze``),
so nothing of the caller's is kept from being collected later.

Handing them back does not cancel the full collection their survivors have earned: it comes with
the caller's next allocations. The CLI's process ends with its command, so there they are left set
aside (``for_this_process``) and that collection never runs.
"""
from __future__ import annotations

import contextlib
import gc


_hand_back = True


def for_this_process() -> None:
    """The process ends when tracecap's work does (the CLI): what is set aside stays set aside."""
    global _hand_back
    _hand_back = False


@contextlib.contextmanager
def older_objects_set_aside():
    """Collections inside the block walk only objects made inside it.

    Left alone when objects are frozen already (a pre-fork server's ``gc.freeze``, or an outer
    block): unfreezing at the end would undo theirs.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        if _hand_back:
            gc.unfreeze()


@contextlib.contextmanager
def paused():
    """No collections at all inside the block: for work that allocates many objects and frees none
    (building the graph), where every collection would be wasted - and a full one walks all of them,
    which made building 48,000 ops 3x slower than linear."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
