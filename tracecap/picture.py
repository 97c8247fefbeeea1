"""A picture of a converted Caffe net as SVG: layers as boxes (name + type), blobs as edges, module
scopes as nested clusters (``layer1`` > ``layer1.0`` > ...) and, given a per-layer status, the
diverging layers coloured.

graphviz's ``dot`` draws it when installed (it lays out large nets best); otherwise
``tracecap.picture_layout`` does, in pure Python. Either way the SVG marks each box
``class="layer st-<status>"`` and each cluster ``class="scope"``, so the HTML report (and tests) can find them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field

from tracecap.errors import TracecapError

STATUSES = ("ok", "diverged", "first", "not-compared")
# status -> (fill, stroke, stroke width); None = no verdict given
STYLE = {None: ("#ffffff", "#6b6b6b", 1), "ok": ("#dff3e0", "#4c9a55", 1),
         "diverged": ("#ffd8a8", "#d9480f", 1.5), "first": ("#ff8787", "#c92a2a", 3),
         "not-compared": ("#f1f3f5", "#adb5bd", 1)}
DOT_TIMEOUT = 120  # seconds; ResNet-50 takes a few


class PictureError(TracecapError):
    """The net to draw could not be read, or the drawing tool failed."""


@dataclass
class Box:
    """One Caffe layer as drawn; ``scope`` is its module path ("" at top level)."""
    name: str
    type: str
    bottoms: list = field(default_factory=list)
    tops: list = field(default_factory=list)
    scope: str = ""


# ---- reading nets -------------------------------------------------------------------------------

def scope_from_name(name):
    """The module path a tracecap layer name stands for.

    ``layer1.0.bn1/bn`` (a part of a decomposition) -> ``layer1.0.bn1``; ``layer1.0.bn2@1`` (an op
    that wrote a new version of that blob: the module is not in the name) -> ``layer1.0``;
    ``layer1.0.conv1`` -> itself. Foreign names work too: ``inception_3a/1x1`` -> ``inception_3a``.
    """
    if "/" in name:
        return name.rsplit("/", 1)[0]
    if re.search(r"@\d+$", name):
        base = name.rsplit("@", 1)[0]
        return base.rsplit(".", 1)[0] if "." in base else ""
    return name


def boxes_from_net(net):
    """Boxes for a NetParameter's layers (top-level ``input:`` blobs become Input boxes), scoped by name."""
    boxes = [Box(name, "Input", [], [name], "") for name in net.input]
    for layer in net.layer:
        boxes.append(Box(layer.name, layer.type, list(layer.bottom), list(layer.top), scope_from_name(layer.name)))
    return boxes


def read_prototxt(path):
    """Boxes of a .prototxt (either dialect) or .caffemodel; a clean PictureError for a missing or
    unparsable file."""
    from tracecap.mappers.caffe.inspect import parse_any_dialect
    if not os.path.isfile(path):
        raise PictureError(f"{path}: no such file")
    try:
        net, _ = parse_any_dialect(path)
    except TracecapError as exc:
        raise PictureError(str(exc)) from None
    boxes = boxes_from_net(net)
    if not boxes:
        raise PictureError(f"{path}: the net has no layers to draw")
    return boxes


def boxes_from_spec(spec, shapes=(), dialect="opencv"):
    """(boxes, model name) for a model SPEC, captured and mapped in memory (nothing is written).

    Scopes come from the capture: each Caffe layer's origin node knows its module path."""
    from tracecap.convert import example_inputs, load_model, run_and_capture
    from tracecap.mappers import caffe
    from tracecap.progress import Steps
    steps = Steps(2, quiet=True)  # the convert pipeline's own loading and capture, told nothing
    model, default_shape, short = load_model(spec, None, None, 0, steps)
    _, graph = run_and_capture(model, example_inputs(shapes, default_shape), steps)
    boxes = [Box(caffe.caffe_name(b), "Input", [], [caffe.caffe_name(b)], "") for b in graph.inputs]
    for layer in caffe.to_layers(graph, dialect):
        scope = layer.origin.scope if layer.origin is not None else scope_from_name(layer.name)
        boxes.append(Box(layer.name, layer.type, list(layer.bottoms), list(layer.tops), scope))
    return boxes, short


# ---- structure ----------------------------------------------------------------------------------

def edges_of(boxes):
    """(producer index, consumer index, blob) per blob read; in-place layers (top == bottom) chain."""
    producer, edges, seen = {}, [], set()
    for i, box in enumerate(boxes):
        for blob in box.bottoms:
            u = producer.get(blob)
            if u is not None and (u, i) not in seen:
                seen.add((u, i))
                edges.append((u, i, blob))
        for blob in box.tops:
            producer[blob] = i
    return edges


def _prefixes(scope):
    """``layer1.0.bn1`` -> [``layer1``, ``layer1.0``, ``layer1.0.bn1``] (``/`` also separates)."""
    if not scope:
        return []
    return [scope[:k] for k, ch in enumerate(scope) if ch in "./" and k] + [scope]


def clusters_of(boxes):
    """(per box: the cluster ids around it, outermost first; id -> label).

    Every module path is a candidate; one holding a single layer is dropped (the box names it), so is
    one whose layers are not joined by their own blobs (a module called twice, like a shared ``relu``:
    its box would enclose what runs between the calls), and one holding exactly what an inner cluster
    holds (the inner one is kept)."""
    members = {}
    for i, box in enumerate(boxes):
        for p in _prefixes(box.scope):
            members.setdefault(p, []).append(i)
    edges = edges_of(boxes)
    keep = [p for p, m in members.items() if len(m) >= 2 and _connected(m, edges)]
    kept = set(keep)
    for p in list(keep):
        inner = [q for q in kept if q != p and q.startswith(p) and q[len(p)] in "./"]
        if any(members[q] == members[p] for q in inner):
            kept.discard(p)
    ids = {p: f"c{k}" for k, p in enumerate(q for q in keep if q in kept)}
    paths = [[ids[p] for p in _prefixes(box.scope) if p in ids] for box in boxes]
    return paths, {cid: p for p, cid in ids.items()}


def _connected(members, edges):
    """Do ``members`` form one piece through the edges between them?"""
    root = {m: m for m in members}

    def find(m):
        while root[m] != m:
            root[m] = root[root[m]]
            m = root[m]
        return m
    for u, v, _ in edges:
        if u in root and v in root:
            root[find(u)] = find(v)
    return len({find(m) for m in members}) == 1


def _style(status, name):
    if status not in STYLE:
        raise PictureError(f"layer {name!r}: status {status!r} is not one of {', '.join(STATUSES)}")
    return STYLE[status]


def _edge_label(boxes, u, blob):
    """Blob names show only where they differ from the producing layer's name (tracecap's never do)."""
    return "" if blob == boxes[u].name else blob


# ---- drawing ------------------------------------------------------------------------------------

def _dot_quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def to_dot(boxes, status=None, title=""):
    """The graphviz source: one node per layer, one subgraph cluster per kept module scope."""
    status = status or {}
    paths, labels = clusters_of(boxes)
    node_ids = _unique_ids(boxes)
    lines = [f"digraph {_dot_quote(title or 'net')} {{",
             '  graph [rankdir=TB, fontname="Helvetica", fontsize=9, nodesep=0.2, ranksep=0.28, '
             'labeljust=l, style="rounded", color="#8fa3bf", fontcolor="#4a5d78"];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, height=0.35, '
             'margin="0.1,0.03"];',
             '  edge [color="#9a9a9a", arrowsize=0.6, fontname="Helvetica", fontsize=8, fontcolor="#666666"];']
    tree = {}   # cluster id -> ([child cluster ids], [box indices]); "" is the root
    tree[""] = ([], [])
    for i, path in enumerate(paths):
        parent = ""
        for cid in path:
            if cid not in tree:
                tree[cid] = ([], [])
                tree[parent][0].append(cid)
            parent = cid
        tree[parent][1].append(i)

    def emit(cid, indent):
        children, own = tree[cid]
        for i in own:
            box = boxes[i]
            fill, stroke, width = _style(status.get(box.name), box.name)
            cls = "layer" + (f" st-{status[box.name]}" if status.get(box.name) else "")
            lines.append(f"{indent}{_dot_quote(node_ids[i])} ["
                         f'id="layer-{i}", class="{cls}", fillcolor="{fill}", color="{stroke}", '
                         f'penwidth={width}, label=<{_html_label(box)}>];')
        for child in children:
            lines.append(f'{indent}subgraph "cluster_{child}" {{')
            lines.append(f'{indent}  id="scope-{child}"; class="scope"; label={_dot_quote(labels[child])};')
            emit(child, indent + "  ")
            lines.append(f"{indent}}}")
    emit("", "  ")
    for u, v, blob in edges_of(boxes):
        label = _edge_label(boxes, u, blob)
        attrs = f" [label={_dot_quote(label)}]" if label else ""
        lines.append(f"  {_dot_quote(node_ids[u])} -> {_dot_quote(node_ids[v])}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _html_label(box):
    from html import escape
    return (f'{escape(box.name)}<BR/><FONT POINT-SIZE="8" COLOR="#555555">{escape(box.type)}</FONT>')


def _unique_ids(boxes):
    """Graphviz node ids: the layer names, made unique (foreign prototxts may repeat one)."""
    ids, used = [], set()
    for box in boxes:
        name, k = box.name, 1
        while name in used:
            k += 1
            name = f"{box.name} ({k})"
        used.add(name)
        ids.append(name)
    return ids


def dot_available():
    return shutil.which("dot")


def _run_dot(source):
    dot = dot_available()
    try:
        done = subprocess.run([dot, "-Tsvg"], input=source.encode("utf-8"), capture_output=True,
                              timeout=DOT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise PictureError(f"graphviz dot took longer than {DOT_TIMEOUT} s") from None
    except OSError as exc:
        raise PictureError(f"graphviz dot could not run: {exc}") from None
    if done.returncode != 0:
        raise PictureError("graphviz dot failed: " + done.stderr.decode("utf-8", "replace").strip()[:500])
    return done.stdout.decode("utf-8")


def _python_svg(boxes, status, title):
    from tracecap.picture_layout import layout_svg
    paths, labels = clusters_of(boxes)
    drawn = []
    for box in boxes:
        st = status.get(box.name)
        drawn.append((box.name, box.type, st) + _style(st, box.name))
    edges = [(u, v, _edge_label(boxes, u, blob)) for u, v, blob in edges_of(boxes)]
    return layout_svg(drawn, edges, paths, labels, title)


def render_svg(boxes, status=None, engine="auto", title=""):
    """(SVG text, engine used). ``engine``: "auto" (dot when installed), "dot" or "python".

    ``status`` maps layer name -> "ok" | "diverged" | "first" | "not-compared"; layers it leaves out
    are drawn plain."""
    status = dict(status or {})
    if engine not in ("auto", "dot", "python"):
        raise PictureError(f"unknown layout engine {engine!r}: use auto, dot or python")
    if engine == "dot" and not dot_available():
        raise PictureError("graphviz dot is not installed (apt-get install graphviz, or use the python engine)")
    if engine != "python" and dot_available():
        try:
            return _run_dot(to_dot(boxes, status, title)), "dot"
        except PictureError as exc:
            if engine == "dot":
                raise
            warnings.warn(f"{exc}; drawing with the pure-Python layout instead")
    return _python_svg(boxes, status, title), "python"


def apply_scopes(boxes, scopes):
    """Boxes with scopes taken from ``scopes`` (layer name -> module path) where it names them."""
    scopes = scopes or {}
    return [Box(b.name, b.type, b.bottoms, b.tops, scopes[b.name] if scopes.get(b.name) is not None else b.scope)
            for b in boxes]


def inline_svg(svg):
    """The SVG element alone, fit to sit inside an HTML page: no XML prolog, doctype, comments or
    namespace declarations (the HTML parser puts <svg> in the SVG namespace itself)."""
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.S)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    return svg.strip()


def write_text(text, path):
    """Write ``text`` (an SVG, a page) to ``path`` atomically; a clean error where it cannot be written."""
    from tracecap.atomic import write_files
    data = text.encode("utf-8")
    try:
        write_files([(path, lambda write: write(data))])
    except OSError as exc:
        raise PictureError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
