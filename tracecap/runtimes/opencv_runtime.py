"""Run a Caffe model with OpenCV's Caffe importer (cv2.dnn), in this process."""
import importlib.util
import re

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


def run(prototxt, caffemodel, inputs, blobs=None, timeout=None):
    """Run in this process (``timeout`` is not applied: OpenCV cannot be interrupted)."""
    from tracecap.runtimes import summarize
    cv2 = _cv2()
    try:
        summary = summarize(prototxt)
    except (ValueError, IndexError) as e:
        raise RuntimeFailure("OpenCV runtime: cannot read %s: %s" % (prototxt, e))

    try:
        net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    except cv2.error as e:
        raise RuntimeFailure("OpenCV could not load the model %s: %s" % (prototxt, _one_line(e)),
                             log=str(e))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

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
    layer_names = []
    for b in requests:
        lname = summary.producer[b][0]
        if lname not in layer_names:
            layer_names.append(lname)

    for n, x in arrays.items():
        net.setInput(x, n)
    try:
        outs = net.forwardAndRetrieve(layer_names) if layer_names else []
    except cv2.error as e:
        raise RuntimeFailure("OpenCV failed to run %s: %s" % (prototxt, _one_line(e)), log=str(e))
    by_layer = dict(zip(layer_names, outs))
    for b in requests:
        lname, k = summary.producer[b]
        got = by_layer[lname]
        if k >= len(got):
            raise RuntimeFailure("OpenCV runtime: layer %r gave %d output(s), blob %r is its output %d"
                                 % (lname, len(got), b, k))
        result[b] = np.array(got[k], dtype=np.float32, copy=True)
    return {b: result[b] for b in wanted}
