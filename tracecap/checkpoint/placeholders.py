"""Inert stand-ins for things a checkpoint names but tracecap never imports or runs.

A pickle can name any class or function.  Instead of importing it, the restricted unpickler
hands out a ``ClassRef`` (the name) and, where the pickle asks to instantiate it, an ``Opaque``
(the name plus the arguments and state the pickle carried).  Nothing from the file executes,
yet the data inside (tensors, numbers, nested objects) stays reachable.
"""
from __future__ import annotations


class ClassRef:
    """A global (class or function) named by the file and deliberately not imported."""

    __slots__ = ("module", "name", "source_file", "source")

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name
        self.source_file = None  # old formats store a module class's file and source text
        self.source = None

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"

    def __eq__(self, other):
        return isinstance(other, ClassRef) and other.path == self.path

    def __hash__(self):
        return hash(("ClassRef", self.path))

    def __repr__(self):
        return f"<{self.path} (not imported)>"


class Opaque:
    """An instance of a class that was not imported: ``class_path``, ``args`` and pickled ``state``.

    Attribute reads fall through to the pickled ``__dict__`` state, so ``ckpt["opt"].lr`` works
    for an argparse Namespace.  Items/elements pickled for dict or list subclasses are kept in
    ``items`` / ``listitems``.
    """

    def __init__(self, cls: ClassRef, args=(), kwargs=None):
        self.class_ref = cls
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.state = None
        self.items = {}
        self.listitems = []

    @property
    def class_path(self) -> str:
        return self.class_ref.path

    @property
    def class_name(self) -> str:
        return self.class_ref.name.rsplit(".", 1)[-1]

    def attributes(self) -> dict:
        """The pickled instance attributes (``__dict__`` part of the state), or {}."""
        state = self.__dict__.get("state")
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = state[0]  # (dict state, slot state)
        return state if isinstance(state, dict) else {}

    def __getattr__(self, name):
        if name.startswith("__") or "state" not in self.__dict__:
            raise AttributeError(name)
        attrs = self.attributes()
        if name in attrs:
            return attrs[name]
        raise AttributeError(f"{self.__dict__['class_ref'].path} object has no pickled attribute {name!r}")

    # Containers subclassing dict/list pickle their items with SETITEMS/APPENDS.
    def __setitem__(self, key, value):
        self.items[key] = value

    def __getitem__(self, key):
        return self.items[key]

    def append(self, value):
        self.listitems.append(value)

    def extend(self, values):
        self.listitems.extend(values)

    def add(self, value):
        self.listitems.append(value)

    def __repr__(self):
        keys = list(self.attributes())
        shown = ", ".join(map(str, keys[:6])) + (", ..." if len(keys) > 6 else "")
        return f"Opaque({self.class_path}{'; ' + shown if shown else ''})"


class Pending:
    """An object whose value is only known after BUILD (numpy arrays, dtypes, 0.1.x Variables).

    ``finish(state)`` returns the real value; the unpickler then replaces the placeholder on its
    stack and in its memo.  ``memo_keys`` lists the memo slots to patch.
    """

    __slots__ = ("kind", "finisher", "memo_keys", "value", "done")

    def __init__(self, kind: str, finisher):
        self.kind = kind
        self.finisher = finisher
        self.memo_keys = []
        self.value = None
        self.done = False

    def finish(self, state=None, has_state=False):
        if not self.done:
            self.value = self.finisher(state, has_state)
            self.done = True
        return self.value

    def __repr__(self):
        return f"<unfinished {self.kind}>"


def resolve(value):
    """The finished value of a ``Pending`` (with no state), or ``value`` itself."""
    if type(value) is Pending:
        return value.finish()
    return value
