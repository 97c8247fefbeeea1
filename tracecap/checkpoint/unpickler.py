"""A pickle virtual machine that executes nothing.

Python's own unpickler imports every global the stream names and calls whatever REDUCE asks
for; that is how a checkpoint runs ``os.system``.  This one decodes the same opcodes (protocols
0-5) but hands every global, call and state-setting step to a ``policy`` object that answers
with safe rebuilders or inert placeholders.  It never imports a module, never looks up an
attribute by a name from the file, and never calls anything the policy did not vet.

Every length is checked by ``Region`` before reading, so memory stays bounded by the file size.
"""
from __future__ import annotations

import _compat_pickle  # the stdlib's own Python 2 -> 3 name table
import codecs
import struct

from tracecap.errors import CheckpointError

from .placeholders import Opaque, Pending
from .source import Region

_BININT = struct.Struct("<i").unpack
_UINT2 = struct.Struct("<H").unpack
_UINT4 = struct.Struct("<I").unpack
_UINT8 = struct.Struct("<Q").unpack
_FLOAT = struct.Struct(">d").unpack

HIGHEST_PROTOCOL = 5


class Policy:
    """What the unpickler asks about everything that is not plain data."""

    def find_global(self, module: str, name: str):
        raise CheckpointError(f"pickle refers to {module}.{name}")

    def call(self, func, args: tuple, kwargs: dict | None, new: bool):
        raise CheckpointError(f"pickle calls {func!r}")

    def build(self, inst, state):
        raise CheckpointError(f"pickle sets state on {type(inst).__name__}")

    def persistent_load(self, pid):
        raise CheckpointError("a plain pickle must not contain persistent ids")

    def py2_string(self, raw: bytes):
        """Python 2 ``str`` (bytes): text if it is UTF-8, otherwise kept as bytes."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw


class _Stop(Exception):
    pass


class RestrictedUnpickler:
    """Load one pickle from ``source`` (a ``Region``) under ``policy``."""

    def __init__(self, source: Region, policy: Policy):
        self.source = source
        self.policy = policy
        self.proto = 0
        self.looks_python2 = False  # saw Python 2 str opcodes (STRING/BINSTRING)
        self._table = _build_table(self)

    def load(self):
        self.stack, self.metastack, self.memo = [], [], {}
        read = self.source.read
        table = self._table
        op = None
        try:
            while True:
                op = read(1)[0]
                handler = table[op]
                if handler is None:
                    raise CheckpointError(
                        f"{self.source.name}: invalid pickle opcode 0x{op:02x} at offset {self.source.tell() - 1}")
                handler()
        except _Stop:
            value = self.stack.pop() if self.stack else None
            if type(value) is Pending:
                value = value.finish()
            return value
        except CheckpointError:
            raise
        except RecursionError as exc:
            raise CheckpointError(f"{self.source.name}: pickle data nested too deeply") from exc
        except MemoryError as exc:
            raise CheckpointError(f"{self.source.name}: pickle data needs more memory than available") from exc
        except Exception as exc:  # malformed stream: stack underflow, bad key type, bad literal ...
            where = f"opcode {bytes([op])!r} near offset {self.source.tell()}" if op is not None else "start"
            raise CheckpointError(
                f"{self.source.name}: malformed pickle ({where}): {type(exc).__name__}: {exc}"[:500]) from exc
        finally:
            self.stack = self.metastack = self.memo = None

    # -- helpers ------------------------------------------------------------------------------
    def _pop_mark(self):
        if not self.metastack:
            raise CheckpointError(f"{self.source.name}: pickle uses a MARK that was never set")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _push_text_int(self, line: bytes):
        text = line[:-1]
        if text == b"00":
            return False
        if text == b"01":
            return True
        return int(text)

    def _memo_put(self, key):
        if key < 0:
            raise CheckpointError(f"{self.source.name}: negative memo index {key}")
        value = self.stack[-1]
        self.memo[key] = value
        if type(value) is Pending:
            value.memo_keys.append(key)

    def _memo_get(self, key):
        try:
            self.stack.append(self.memo[key])
        except KeyError:
            raise CheckpointError(f"{self.source.name}: pickle reads memo slot {key} that was never written") from None

    def _py2(self, raw: bytes):
        self.looks_python2 = True
        return self.policy.py2_string(raw)

    def _global(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise CheckpointError(f"{self.source.name}: global names must be text, got {module!r} {name!r}")
        if self.proto < 3:  # Python 2 names; Python 3 writes them too under protocols < 3
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return self.policy.find_global(module, name)

    def _call(self, func, args, kwargs=None, new=False):
        if type(args) is not tuple:
            raise CheckpointError(f"{self.source.name}: call arguments must be a tuple, got {type(args).__name__}")
        return self.policy.call(func, args, kwargs, new)


_LISTS = (list, Opaque)
_MAPPINGS = (dict, Opaque)
_SETS = (set, Opaque)


def _build_table(u: RestrictedUnpickler):
    """Opcode byte -> handler.  Written as closures over ``u`` to keep the hot loop cheap."""
    src = u.source
    read, readline = src.read, src.readline
    table = [None] * 256

    def op(code):
        def register(fn):
            table[ord(code)] = fn
            return fn
        return register

    def push(value):
        u.stack.append(value)

    # -- framing / protocol --------------------------------------------------------------------
    @op("\x80")
    def proto():
        u.proto = read(1)[0]
        if u.proto > HIGHEST_PROTOCOL:
            raise CheckpointError(f"{src.name}: unsupported pickle protocol {u.proto}")

    @op("\x95")
    def frame():
        size = _UINT8(read(8))[0]
        if size > src.remaining:
            raise CheckpointError(f"{src.name} is truncated: a pickle frame of {size} bytes does not fit")

    @op(".")
    def stop():
        raise _Stop

    # -- numbers -------------------------------------------------------------------------------
    @op("I")
    def int_text():
        push(u._push_text_int(readline()))

    @op("J")
    def binint():
        push(_BININT(read(4))[0])

    @op("K")
    def binint1():
        push(read(1)[0])

    @op("M")
    def binint2():
        push(_UINT2(read(2))[0])

    @op("L")
    def long_text():
        text = readline()[:-1]
        push(int(text[:-1] if text.endswith(b"L") else text))

    @op("\x8a")
    def long1():
        n = read(1)[0]
        push(int.from_bytes(read(n), "little", signed=True))

    @op("\x8b")
    def long4():
        n = _BININT(read(4))[0]
        if n < 0:
            raise CheckpointError(f"{src.name}: negative LONG4 length")
        push(int.from_bytes(read(n), "little", signed=True))

    @op("F")
    def float_text():
        push(float(readline()[:-1]))

    @op("G")
    def binfloat():
        push(_FLOAT(read(8))[0])

    @op("N")
    def none():
        push(None)

    @op("\x88")
    def true():
        push(True)

    @op("\x89")
    def false():
        push(False)

    # -- strings -------------------------------------------------------------------------------
    @op("S")
    def string_text():
        text = readline()[:-1]
        if len(text) >= 2 and text[0] == text[-1] and text[:1] in (b"'", b'"'):
            text = text[1:-1]
        else:
            raise CheckpointError(f"{src.name}: STRING literal is not quoted")
        push(u._py2(codecs.escape_decode(text)[0]))

    @op("T")
    def binstring():
        n = _BININT(read(4))[0]
        if n < 0:
            raise CheckpointError(f"{src.name}: negative BINSTRING length")
        push(u._py2(read(n)))

    @op("U")
    def short_binstring():
        push(u._py2(read(read(1)[0])))

    @op("B")
    def binbytes():
        push(read(_UINT4(read(4))[0]))

    @op("C")
    def short_binbytes():
        push(read(read(1)[0]))

    @op("\x8e")
    def binbytes8():
        push(read(_UINT8(read(8))[0]))

    @op("\x96")
    def bytearray8():
        push(bytearray(read(_UINT8(read(8))[0])))

    @op("\x97")
    def next_buffer():
        raise CheckpointError(f"{src.name}: pickle expects out-of-band buffers, which a file cannot supply")

    @op("\x98")
    def readonly_buffer():
        top = u.stack[-1]
        if isinstance(top, bytearray):
            u.stack[-1] = bytes(top)

    @op("V")
    def unicode_text():
        push(str(readline()[:-1], "raw-unicode-escape"))

    @op("X")
    def binunicode():
        push(str(read(_UINT4(read(4))[0]), "utf-8", "surrogatepass"))

    @op("\x8c")
    def short_binunicode():
        push(str(read(read(1)[0]), "utf-8", "surrogatepass"))

    @op("\x8d")
    def binunicode8():
        push(str(read(_UINT8(read(8))[0]), "utf-8", "surrogatepass"))

    # -- containers ----------------------------------------------------------------------------
    @op("(")
    def mark():
        u.metastack.append(u.stack)
        u.stack = []

    @op("]")
    def empty_list():
        push([])

    @op(")")
    def empty_tuple():
        push(())

    @op("}")
    def empty_dict():
        push({})

    @op("\x8f")
    def empty_set():
        push(set())

    @op("l")
    def list_():
        items = u._pop_mark()
        push(items)

    @op("t")
    def tuple_():
        push(tuple(u._pop_mark()))

    @op("\x85")
    def tuple1():
        u.stack[-1] = (u.stack[-1],)

    @op("\x86")
    def tuple2():
        b = u.stack.pop()
        u.stack[-1] = (u.stack[-1], b)

    @op("\x87")
    def tuple3():
        c = u.stack.pop()
        b = u.stack.pop()
        u.stack[-1] = (u.stack[-1], b, c)

    @op("d")
    def dict_():
        items = u._pop_mark()
        if len(items) % 2:
            raise CheckpointError(f"{src.name}: DICT with an odd number of items")
        push({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    @op("\x91")
    def frozenset_():
        push(frozenset(u._pop_mark()))

    def target(kinds, what):
        obj = u.stack[-1]
        if not isinstance(obj, kinds):
            raise CheckpointError(f"{src.name}: {what} applied to {type(obj).__name__}")
        return obj

    @op("a")
    def append():
        value = u.stack.pop()
        target(_LISTS, "APPEND").append(value)

    @op("e")
    def appends():
        items = u._pop_mark()
        target(_LISTS, "APPENDS").extend(items)

    @op("s")
    def setitem():
        value = u.stack.pop()
        key = u.stack.pop()
        target(_MAPPINGS, "SETITEM")[key] = value

    @op("u")
    def setitems():
        items = u._pop_mark()
        if len(items) % 2:
            raise CheckpointError(f"{src.name}: SETITEMS with an odd number of items")
        obj = target(_MAPPINGS, "SETITEMS")
        for i in range(0, len(items), 2):
            obj[items[i]] = items[i + 1]

    @op("\x90")
    def additems():
        items = u._pop_mark()
        obj = target(_SETS, "ADDITEMS")
        for item in items:
            obj.add(item)

    # -- stack and memo ------------------------------------------------------------------------
    @op("0")
    def pop():
        if u.stack:
            u.stack.pop()
        else:
            u._pop_mark()

    @op("1")
    def pop_mark():
        u._pop_mark()

    @op("2")
    def dup():
        push(u.stack[-1])

    @op("g")
    def get():
        u._memo_get(int(readline()[:-1]))

    @op("h")
    def binget():
        u._memo_get(read(1)[0])

    @op("j")
    def long_binget():
        u._memo_get(_UINT4(read(4))[0])

    @op("p")
    def put():
        u._memo_put(int(readline()[:-1]))

    @op("q")
    def binput():
        u._memo_put(read(1)[0])

    @op("r")
    def long_binput():
        u._memo_put(_UINT4(read(4))[0])

    @op("\x94")
    def memoize():
        u._memo_put(len(u.memo))

    # -- objects: everything below goes through the policy -------------------------------------
    def text_global():
        module = readline()[:-1].decode("utf-8")
        name = readline()[:-1].decode("utf-8")
        return u._global(module, name)

    @op("c")
    def global_():
        push(text_global())

    @op("\x93")
    def stack_global():
        name = u.stack.pop()
        module = u.stack.pop()
        push(u._global(module, name))

    for code in ("\x82", "\x83", "\x84"):
        def ext():
            raise CheckpointError(f"{src.name}: pickle uses the copyreg extension registry, which tracecap refuses")
        table[ord(code)] = ext

    @op("R")
    def reduce():
        args = u.stack.pop()
        func = u.stack[-1]
        u.stack[-1] = u._call(func, args)

    @op("\x81")
    def newobj():
        args = u.stack.pop()
        cls = u.stack[-1]
        u.stack[-1] = u._call(cls, args, new=True)

    @op("\x92")
    def newobj_ex():
        kwargs = u.stack.pop()
        args = u.stack.pop()
        cls = u.stack[-1]
        if not isinstance(kwargs, dict):
            raise CheckpointError(f"{src.name}: NEWOBJ_EX keyword arguments must be a dict")
        u.stack[-1] = u._call(cls, args, kwargs, new=True)

    @op("i")
    def inst():
        cls = text_global()
        args = tuple(u._pop_mark())
        push(u._call(cls, args))

    @op("o")
    def obj():
        items = u._pop_mark()
        if not items:
            raise CheckpointError(f"{src.name}: OBJ without a class")
        push(u._call(items[0], tuple(items[1:])))

    @op("b")
    def build():
        state = u.stack.pop()
        inst = u.stack[-1]
        if type(inst) is Pending:
            value = inst.finish(state, True)
            u.stack[-1] = value
            for key in inst.memo_keys:
                u.memo[key] = value
        else:
            u.policy.build(inst, state)

    @op("P")
    def persid():
        push(u.policy.persistent_load(readline()[:-1].decode("ascii")))

    @op("Q")
    def binpersid():
        pid = u.stack.pop()
        push(u.policy.persistent_load(pid))

    return table

