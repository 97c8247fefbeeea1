"""Run a Caffe model with OpenCV's Caffe importer (cv2.dnn), in this process."""
import importlib.util
import os
import re
import tempfile

import numpy as np

from tracecap.errors import RuntimeFailure


def is_available():
    return importlib.util.find_spec("cv2") is not None


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise RuntimeFailure("OpenCV runtime not installed: pip install opencv-python-headless "
                             "(%s)" % e)
    return cv2


def _one_line(err):
    """cv2.error text on one line: "<file:line>: error: (code) what in function f > expected ..."."""
    text = " ".join(l.strip().lstrip(">").strip() for l in str(err).splitlines() if l.strip())
    text = re.sub(r"^OpenCV\([^)]*\) ", "", text)
    return text if len(text) <= 500 else text[:500] + " ..."


def _load(cv2, path, caffemodel, prototxt):
    try:
        net = cv2.dnn.readNetFromCaffe(path, caffemodel)
    except cv2.error as e:
        raise RuntimeFailure("OpenCV could not load the model %s: %s" % (prototxt, _one_line(e)),
                             log=str(e))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def _with_readers(prototxt, blobs, tmpdir):
    """A copy of the prototxt with an identity Split right after the layer of each blob in ``blobs``.

    Measured with OpenCV 4.14: when several layers' outputs are asked for at once, the second and
    later outputs of a layer (ShuffleNet's Slice) can come back overwritten - their memory is reused
    later in the forward pass - while its first output is kept. A Split that reads such an output as
    soon as it is made copies it into a first output of its own. Returns (path, {blob: Split name}).
    """
    from google.protobuf import text_format
    from tracecap.mappers.caffe import writer
    net = writer.load(prototxt, dialect="opencv")
    layers = list(net.layer)
    del net.layer[:]
    wanted, readers, names = set(blobs), {}, {l.name for l in layers} | {t for l in layers for t in l.top}
    for layer in layers:
        net.layer.add().CopyFrom(layer)
        for t in layer.top[1:]:
            if t in wanted:
                name = t + "/tracecap_read"
                while name in names:
                    name += "_"
                names.add(name)
                net.layer.add(name=name, type="Split", bottom=[t], top=[name])
                readers[t] = name
    path = os.path.join(tmpdir, os.path.basename(prototxt))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(net))
    return path, readers


def _forward(cv2, prototxt, caffemodel, arrays, requests, summary, later, fusion):
    """(outputs per layer asked, blob -> (layer, top index), layer names asked): one forward pass, with
    Split readers after the layers of the blobs in ``later`` (see ``_with_readers``)."""
    with tempfile.TemporaryDirectory(prefix="tracecap-opencv-") as tmp:
        prototxt_run, readers = _with_readers(prototxt, later, tmp) if later else (prototxt, {})
        net = _load(cv2, prototxt_run, caffemodel, prototxt)
    net.enableFusion(bool(fusion))
    producer = dict(summary.producer)
    producer.update((b, (name, 0)) for b, name in readers.items())
    layer_names = []
    for b in requests:
        lname = producer[b][0]
        if lname not in layer_names:
            layer_names.append(lname)
    for n, x in arrays.items():
        net.setInput(x, n)
    outs = net.forwardAndRetrieve(layer_names) if layer_names else []
    return outs, producer, layer_names


def run(prototxt, caffemodel, inputs, blobs=None, timeout=None, fusion=True):
    """Run in this process (``timeout`` is not applied: OpenCV cannot be interrupted); ``fusion=False``
    keeps OpenCV from fusing layers (each read top is then its own layer's value)."""
    from tracecap.runtimes import summarize
    cv2 = _cv2()
    try:
        summary = summarize(prototxt)
    except (ValueError, IndexError) as e:
        raise RuntimeFailure("OpenCV runtime: cannot read %s: %s" % (prototxt, e))

    unknown = [n for n in inputs if n not in summary.inputs]
    if unknown:
        raise RuntimeFailure("OpenCV runtime: %s not among the net's inputs %s"
                             % (", ".join(map(repr, unknown)), summary.inputs))
    missing = [n for n in summary.inputs if n not in inputs]
    if missing:
        raise RuntimeFailure("OpenCV runtime: no value given for input(s) %s" % ", ".join(map(repr, missing)))
    arrays = {n: np.ascontiguousarray(np.asarray(x, dtype=np.float32)) for n, x in inputs.items()}

    wanted = list(blobs) if blobs is not None else list(summary.outputs)
    result = {}
    # blob -> (layer, top index) of its last writer; inputs are returned as given
    requests = []
    for b in wanted:
        if b in summary.producer:
            requests.append(b)
        elif b in arrays:
            result[b] = arrays[b].copy()
        else:
            raise RuntimeFailure("OpenCV runtime: no blob named %r in %s" % (b, prototxt))
    later = [b for b in requests if summary.producer[b][1] > 0]
    try:
        outs, producer, layer_names = _forward(cv2, prototxt, caffemodel, arrays, requests, summary, later, fusion)
    except cv2.error as e:
        if not later:
            raise RuntimeFailure("OpenCV failed to run %s: %s" % (prototxt, _one_line(e)), log=str(e))
        # a layer whose later tops OpenCV makes only when asked for directly (Pooling's argmax mask):
        # no Split can read them, so they are read from the layer itself
        try:
            outs, producer, layer_names = _forward(cv2, prototxt, caffemodel, arrays, requests, summary, [], fusion)
        except cv2.error as e:
            raise RuntimeFailure("OpenCV failed to run %s: %s" % (prototxt, _one_line(e)), log=str(e))
    by_layer = dict(zip(layer_names, outs))
    for b in requests:
        lname, k = producer[b]
        got = by_layer[lname]
        if k >= len(got):
            raise RuntimeFailure("OpenCV runtime: layer %r gave %d output(s), blob %r is its output %d"
                                 % (lname, len(got), b, k))
        result[b] = np.array(got[k], dtype=np.float32, copy=True)
    return {b: result[b] for b in wanted}
