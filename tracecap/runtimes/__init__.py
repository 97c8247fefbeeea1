"""Run a converted Caffe model on a real runtime.

    from tracecap import runtimes
    out = runtimes.run("net.prototxt", "net.caffemodel", {"data": x})              # OpenCV
    out = runtimes.run("net.prototxt", "net.caffemodel", {"data": x}, runtime="caffe")
    out = runtimes.run(..., blobs=["conv1", "prob"])                               # named blobs
    runtimes.available()   # e.g. ["opencv", "caffe"]

``run`` returns ``{blob name: np.ndarray}`` for the net's outputs (blobs some layer produces
and no later layer consumes, as Caffe counts them) or for the blobs named in ``blobs``.
A blob written in place (``top`` == ``bottom``, e.g. a ReLU after a convolution) is read
after the last layer that writes it, as Caffe does.

Runtimes:
  "opencv"  cv2.dnn's Caffe importer, in this process.
  "caffe"   real Caffe (brocolli-caffe, built by ``python -m tracecap.runtimes.build_caffe``),
            in a child process: a Caffe CHECK failure aborts the child, and the caller gets a
            ``tracecap.RuntimeFailure`` carrying Caffe's log instead of dying.

Every failure is a ``tracecap.RuntimeFailure``; its ``log`` holds the runtime's own words.
"""
import importlib
import os
import re
from typing import NamedTuple

from tracecap.errors import RuntimeFailure

__all__ = ["run", "available", "reads", "register", "RUNTIMES", "RuntimeFailure"]


class Runtime(NamedTuple):
    """A real runtime: the Caffe dialects it reads and the module that runs it.

    The module provides ``is_available()`` (cheap, loads nothing) and
    ``run(prototxt, caffemodel, inputs, blobs=None, timeout=None)``.
    """
    name: str
    dialects: tuple
    module: str


_REGISTRY = {}


def register(name, dialects, module):
    """Make a runtime known to ``run``/``available``/``reads`` (a third one plugs in here)."""
    _REGISTRY[name] = Runtime(name, tuple(dialects), module)


# Both read the opencv dialect: OpenCV's importer and brocolli-caffe parse pooling `ceil_mode`.
register("opencv", ("opencv",), "tracecap.runtimes.opencv_runtime")
register("caffe", ("opencv",), "tracecap.runtimes.caffe_runtime")

RUNTIMES = tuple(_REGISTRY)


def _module(name):
    return importlib.import_module(_REGISTRY[name].module)


def reads(runtime, dialect):
    """Does ``runtime`` read Caffe files of ``dialect``?"""
    return dialect in _REGISTRY[runtime].dialects


def dialect_for(runtime):
    """The dialect to write for ``runtime`` (the first it reads)."""
    return _REGISTRY[runtime].dialects[0]


def available(dialect=None):
    """Names of the runtimes usable here (that read ``dialect``, if given), in registration order."""
    return [name for name, rt in _REGISTRY.items()
            if (dialect is None or dialect in rt.dialects) and _module(name).is_available()]


def run(prototxt, caffemodel, inputs, runtime="opencv", blobs=None, timeout=None, fusion=True):
    """Run the model once and return ``{blob name: np.ndarray}`` (float32).

    prototxt, caffemodel: paths.  inputs: ``{input blob name: array}`` (NCHW, cast to float32).
    runtime: "opencv" or "caffe".  blobs: names of blobs to return instead of the outputs.
    timeout: seconds the Caffe child may take (default $TRACECAP_CAFFE_TIMEOUT or 600);
    ignored by OpenCV, which runs in this process.
    fusion: False runs every layer on its own where the runtime would fuse some (OpenCV's
    ``enableFusion(False)``), so each top read is the value its layer computes; Caffe never fuses.
    """
    if runtime not in _REGISTRY:
        raise ValueError("unknown runtime %r; choose one of %s" % (runtime, ", ".join(_REGISTRY)))
    prototxt, caffemodel = os.fspath(prototxt), os.fspath(caffemodel)
    for what, path in (("prototxt", prototxt), ("caffemodel", caffemodel)):
        if not os.path.isfile(path):
            raise RuntimeFailure("%s runtime: %s file not found: %s" % (runtime, what, path))
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError("inputs must be a non-empty dict {input blob name: array}")
    if blobs is not None:
        if isinstance(blobs, str):
            blobs = [blobs]
        blobs = list(blobs)
    extra = {} if fusion else {"fusion": False}  # only then: a runtime that never fuses need not know the option
    return _module(runtime).run(prototxt, caffemodel, inputs, blobs=blobs, timeout=timeout, **extra)


# --------------------------------------------------------------------------- prototxt summary
# Both runtimes need the same few facts from the prototxt (layer names, types, bottoms, tops)
# to agree on which blobs are the outputs and which layer writes a blob last.  A small reader
# of the protobuf text format gives them without loading any Caffe proto schema (so this
# works next to pycaffe and next to tracecap's own proto package alike).

_TOKEN = re.compile(r"""
    \s+ | \#[^\n]* |                                  # blanks and comments
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*') |
    (?P<punct>[{}\[\]:<>,;]) |
    (?P<word>[^\s{}\[\]:<>,;"'\#]+)
""", re.VERBOSE)


def _tokens(text):
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            raise ValueError("unreadable text near offset %d" % pos)
        pos = m.end()
        if m.group("str") is not None:
            yield ("str", _unquote(m.group("str")))
        elif m.group("punct") is not None:
            yield ("punct", m.group("punct"))
        elif m.group("word") is not None:
            yield ("word", m.group("word"))
    if pos != len(text):
        raise ValueError("unreadable text near offset %d" % pos)


def _unquote(s):
    body = s[1:-1]
    if "\\" not in body:
        return body
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _parse_message(toks, i, closer):
    """Parse fields until `closer` (None = end); return ({name: [values]}, next index)."""
    msg = {}
    while i < len(toks):
        kind, val = toks[i]
        if kind == "punct" and val == closer:
            return msg, i + 1
        if kind == "punct" and val in ",;":
            i += 1
            continue
        if kind != "word":
            raise ValueError("expected a field name, got %r" % val)
        name = val
        i += 1
        if i < len(toks) and toks[i] == ("punct", ":"):
            i += 1
        if i >= len(toks):
            raise ValueError("field %r has no value" % name)
        kind, val = toks[i]
        if kind == "punct" and val in "{<":
            sub, i = _parse_message(toks, i + 1, "}" if val == "{" else ">")
            msg.setdefault(name, []).append(sub)
        elif kind == "punct" and val == "[":
            i += 1
            while toks[i] != ("punct", "]"):
                k2, v2 = toks[i]
                if k2 == "punct" and v2 in "{<":
                    sub, i = _parse_message(toks, i + 1, "}" if v2 == "{" else ">")
                    msg.setdefault(name, []).append(sub)
                    continue
                if not (k2 == "punct" and v2 == ","):
                    msg.setdefault(name, []).append(v2)
                i += 1
            i += 1
        elif kind in ("str", "word"):
            # adjacent string literals concatenate
            if kind == "str":
                while i + 1 < len(toks) and toks[i + 1][0] == "str":
                    val += toks[i + 1][1]
                    i += 1
            msg.setdefault(name, []).append(val)
            i += 1
        else:
            raise ValueError("unexpected %r after field %r" % (val, name))
    if closer is not None:
        raise ValueError("missing %r" % closer)
    return msg, i


def parse_prototxt(path):
    """Read a prototxt into nested ``{field: [values]}`` dicts (strings for scalars)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    msg, _ = _parse_message(list(_tokens(text)), 0, None)
    return msg


class NetSummary(object):
    """Layers (name, type, bottoms, tops) in order, inputs, outputs and blob producers."""

    def __init__(self, layers, inputs):
        self.layers = layers          # [{"name", "type", "bottom": [...], "top": [...]}]
        self.inputs = inputs          # input blob names, in order
        self.producer = {}            # blob -> (layer name, top index) of its last writer
        available = list(inputs)
        for layer in layers:
            for b in layer["bottom"]:
                if b in available:
                    available.remove(b)
            for k, t in enumerate(layer["top"]):
                self.producer[t] = (layer["name"], k)
                if t not in available:
                    available.append(t)
        self.outputs = available      # produced and never consumed afterwards (Caffe's rule)
        self.layer_type = {l["name"]: l["type"] for l in layers}

    def layer_after(self, name):
        """Name of the layer that follows `name`, or None."""
        names = [l["name"] for l in self.layers]
        if name in names and names.index(name) + 1 < len(names):
            return names[names.index(name) + 1]
        return None


def _in_test_phase(layer):
    """Caffe keeps a layer in the TEST phase unless include/exclude rules say otherwise."""
    for rule in layer.get("include", []):
        if isinstance(rule, dict) and rule.get("phase", ["TEST"])[-1] != "TEST":
            return False
    for rule in layer.get("exclude", []):
        if isinstance(rule, dict) and rule.get("phase", [None])[-1] == "TEST":
            return False
    return True


def summarize(prototxt):
    """NetSummary of a prototxt file (V2 ``layer`` or legacy V1 ``layers`` entries)."""
    net = parse_prototxt(prototxt)
    inputs = [v for v in net.get("input", []) if isinstance(v, str)]
    layers = []
    for key in ("layer", "layers"):
        for i, l in enumerate(net.get(key, [])):
            if not isinstance(l, dict) or not _in_test_phase(l):
                continue
            entry = {
                "name": (l.get("name") or ["%s_%d" % (key, i)])[-1],
                "type": (l.get("type") or ["?"])[-1],
                "bottom": [b for b in l.get("bottom", []) if isinstance(b, str)],
                "top": [t for t in l.get("top", []) if isinstance(t, str)],
            }
            layers.append(entry)
            if entry["type"] == "Input":
                inputs.extend(t for t in entry["top"] if t not in inputs)
    return NetSummary(layers, inputs)
