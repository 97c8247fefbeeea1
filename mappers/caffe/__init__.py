"""Caffe output: ``to_net(graph, dialect)`` and ``save(graph, prototxt, caffemodel, dialect)``.

Dialects: ``bvlc`` (BVLC master's caffe.proto: pooling ``round_mode``) and
``opencv`` (OpenCV 4.x's importer and SSD-style forks such as brocolli-caffe:
pooling ``ceil_mode``). See README "Which dialect".
"""
from __future__ import annotations

from tracecap.errors import MappingError, UnsupportedOpError
from tracecap.mappers.caffe import layers as _layers  # noqa: F401  (registers the mappers)
from tracecap.mappers.caffe import netspec, writer
from tracecap.mappers.caffe.proto import DIALECTS
from tracecap.mappers.caffe.registry import MAPPERS, Context, Unsupported, caffe_name
from tracecap.mappers.caffe.runtime_quirks import keep_fusions_apart

__all__ = ["to_net", "to_layers", "save", "supported_ops", "graph_blobs_of", "caffe_name", "DIALECTS"]


def supported_ops():
    """Canonical op names with a Caffe mapper."""
    return sorted(MAPPERS)


def _check_dialect(dialect):
    if dialect not in DIALECTS:
        raise MappingError(f"unknown Caffe dialect {dialect!r}; choose one of {', '.join(DIALECTS)}")


def to_layers(graph, dialect="bvlc"):
    """Map every node; report *all* unsupported nodes at once.

    Each layer's ``origin`` is the node it was mapped from; ``graph_blobs_of(layer)`` tells which
    of its tops stand for graph blobs (the others are intermediates of a decomposition).
    """
    _check_dialect(dialect)
    graph.lint()
    layers, refusals = [], []
    for node in graph.nodes:
        fn = MAPPERS.get(node.op)
        empty = [t for t in node.tops + node.bottoms if not t.is_constant and t.shape is not None and 0 in t.shape]
        if empty:
            refusals.append((node, f"empty tensor {empty[0].name} of shape {tuple(empty[0].shape)}: a Caffe blob "
                                   f"has at least one element"))
            continue
        if fn is None:
            refusals.append((node, f"no Caffe mapping for `{node.op}`"))
            continue
        try:
            made = fn(node, Context(node, dialect))
            _check_tops_written(node, made)
        except (Unsupported, MappingError) as exc:
            refusals.append((node, str(exc)))
            continue
        for layer in made:
            layer.origin = node
        layers.extend(made)
    if refusals:
        problems = [f"{node.where()}: {why}" for node, why in refusals]
        raise UnsupportedOpError(
            f"{len(problems)} op(s) cannot be converted to Caffe ({dialect} dialect):\n  - " + "\n  - ".join(problems),
            problems, refusals)
    return keep_fusions_apart(layers)


def _check_tops_written(node, layers):
    """Every top that something reads (or that is a graph output) must be written; an unread one
    (the indices of ``x.max(1)[0]``) need not be."""
    written = {t for layer in layers for t in layer.tops}
    missing = [caffe_name(t) for t in node.tops
               if caffe_name(t) not in written and (t.users or t in node.graph.outputs)]
    if missing:
        raise MappingError(f"internal: the {node.op} mapper wrote no layer for top(s) {', '.join(missing)}")


def graph_blobs_of(layer):
    """{Caffe top name: graph Blob} for the tops of ``layer`` that stand for a blob of the graph."""
    node = layer.origin
    if node is None:
        return {}
    mine = {caffe_name(t): t for t in node.tops}
    return {t: mine[t] for t in layer.tops if t in mine}


def _build(graph, dialect, name, with_blobs, layers=None):
    layers = to_layers(graph, dialect) if layers is None else layers
    inputs = {}
    for blob in graph.inputs:
        if blob.shape is None or len(blob.shape) == 0:
            raise MappingError(f"graph input {blob.name} has no shape")
        inputs[caffe_name(blob)] = tuple(blob.shape)
    read = {b for layer in layers for b in layer.bottoms}
    unused = [n for n in inputs if n not in read]
    if unused and "Silence" in netspec.layer_types(dialect):
        # an input read for its shape only (``a.expand_as(b)``): OpenCV refuses a net with an unread input
        layers = layers + [netspec.Layer("Silence", "unused_inputs/silence", unused, [])]
    try:
        return netspec.to_net(layers, name=name, inputs=inputs, dialect=dialect, with_blobs=with_blobs)
    except MappingError as exc:
        raise MappingError(f"building the {dialect} net failed: {exc}") from None


def to_net(graph, dialect="bvlc", name="tracecap"):
    """The NetParameter (of the dialect's generated module) for ``graph``, weights included."""
    return _build(graph, dialect, name, with_blobs=True)


def save(graph, prototxt, caffemodel, dialect="bvlc", name="tracecap", *, progress=None, layers=None):
    """Write ``graph`` as ``prototxt`` + ``caffemodel``, atomically (nothing half-written on failure).

    A quantized graph (``tracecap.quant``) becomes the float net its integers encode, and its
    quantization table is written beside the caffemodel as ``<model>.quant.json``.

    The files are those ``writer.save(to_net(graph, dialect, name), ...)`` writes, but the
    weights go from their arrays to the caffemodel without being encoded into the
    message; the NetParameter returned therefore has the layers without their blobs
    (use ``to_net`` for the net with blobs).

    Weights are written from the tensors' own memory (no copy of the model is made); a blob
    that is a transform of a weight (a transpose, a dtype conversion) is made while its layer
    is written. ``progress(done_bytes, total_bytes)``, if given, is called as weights reach the
    file (after every layer with blobs), ``done`` growing to ``total``. ``layers``: ``to_layers(graph,
    dialect)`` when the caller already has them (the per-layer report uses the same), else made here.
    """
    from tracecap import collector
    from tracecap.quant import table
    with collector.older_objects_set_aside():  # the messages built here would set off a full collection
        layers = to_layers(graph, dialect) if layers is None else layers
        net, blobs = _build(graph, dialect, name, with_blobs=False, layers=layers)
        # a quantized graph also gets its quantization table (<model>.quant.json), in the same atomic step
        writer.save_parts(net, blobs, prototxt, caffemodel, extra=table.files_for(graph, layers, caffemodel),
                          progress=progress)
    return net
