"""Run a Caffe model on real Caffe (brocolli-caffe, built by build_caffe) in a child process.

Caffe reports a bad model with a glog CHECK, which aborts its process.  So the net runs in a
child started with this same interpreter (``_caffe_child.py``); inputs and outputs travel in
temporary .npz files; the child's log (stderr, glog INFO and up) goes to a temporary file.
On a non-zero exit, a signal or a time-out the caller gets a ``RuntimeFailure`` whose message
says what failed and, when the log tells, in which layer; ``.log`` holds the child's log.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile

import numpy as np

from tracecap.errors import RuntimeFailure

NOT_BUILT = "Caffe runtime not built: run python -m tracecap.runtimes.build_caffe"
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_caffe_child.py")
DEFAULT_TIMEOUT = 600.0
MARK = "tracecap-child:"
EXIT_REPORTED = 3
MAX_LOG_CHARS = 200000

# glog: "F1126 10:02:54.123456  4242 base_conv_layer.cpp:123] Check failed: ..."
# (newer glog may print the year too: "F20261126 ...")
_GLOG_FATAL = re.compile(r"^F\d{4,8} \S+\s+\d+ (?P<src>[^\]\s]+)\] (?P<msg>.*)$")
_PROTOBUF_ERR = re.compile(r"^\[libprotobuf (?:ERROR|FATAL) [^\]]*\] (?P<msg>.*)$")
_LAYER_PROGRESS = re.compile(r"\] (?P<what>Creating [Ll]ayer|Setting up) (?P<name>.+?)\s*$")


def find_caffe():
    from tracecap.runtimes.build_caffe import find_caffe as _find
    return _find()


def is_available():
    try:
        return find_caffe() is not None
    except Exception:
        return False


def _timeout(timeout):
    if timeout is not None:
        return float(timeout)
    env = os.environ.get("TRACECAP_CAFFE_TIMEOUT")
    return float(env) if env else DEFAULT_TIMEOUT


def run(prototxt, caffemodel, inputs, blobs=None, timeout=None, fusion=True):
    """Run in a child process; ``fusion`` is accepted for the common interface (Caffe runs layers as written)."""
    pydir = find_caffe()
    if pydir is None:
        raise RuntimeFailure(NOT_BUILT)
    prototxt, caffemodel = os.path.abspath(prototxt), os.path.abspath(caffemodel)
    names = list(inputs)
    limit = _timeout(timeout)
    with tempfile.TemporaryDirectory(prefix="tracecap-caffe-") as tmp:
        input_file = os.path.join(tmp, "inputs.npz")
        output_file = os.path.join(tmp, "outputs.npz")
        np.savez(input_file, *[np.ascontiguousarray(np.asarray(inputs[n], dtype=np.float32))
                               for n in names])
        request = os.path.join(tmp, "request.json")
        with open(request, "w") as f:
            json.dump({"pydir": pydir, "prototxt": prototxt, "caffemodel": caffemodel,
                       "inputs": names, "input_file": input_file,
                       "blobs": list(blobs) if blobs is not None else None,
                       "output_file": output_file}, f)
        env = dict(os.environ)
        # INFO lines name each layer as Caffe sets it up: they are how a CHECK failure is
        # pinned to its layer.  They go to the log file, never to the caller's terminal.
        env["GLOG_minloglevel"] = "0"
        env["GLOG_logtostderr"] = "1"
        env.pop("GLOG_log_dir", None)
        log_path = os.path.join(tmp, "child.log")
        with open(log_path, "wb") as logf:
            try:
                proc = subprocess.run([sys.executable, CHILD, request], stdin=subprocess.DEVNULL,
                                      stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                                      timeout=limit)
            except subprocess.TimeoutExpired:
                log = _read_log(log_path)
                where = _describe_stage(_last_stage(log), prototxt)
                raise RuntimeFailure("Caffe runtime timed out after %gs %s; the child was killed "
                                     "(raise timeout= or $TRACECAP_CAFFE_TIMEOUT)"
                                     % (limit, where or "running %s" % prototxt), log=log)
        log = _read_log(log_path)
        if proc.returncode != 0:
            raise _failure(proc.returncode, log, prototxt)
        try:
            with open(output_file + ".json") as f:
                wanted = json.load(f)
            with np.load(output_file) as data:
                arrays = [data["arr_%d" % i] for i in range(len(wanted))]
        except (OSError, ValueError, KeyError) as e:
            raise RuntimeFailure("Caffe runtime: the child exited cleanly but its outputs are "
                                 "unreadable: %s" % e, log=log)
    return dict(zip(wanted, arrays))


def _read_log(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if len(text) > MAX_LOG_CHARS:
        text = "[... %d characters cut ...]\n" % (len(text) - MAX_LOG_CHARS) + text[-MAX_LOG_CHARS:]
    return text


def _last_stage(log):
    last = None
    for line in log.splitlines():
        if line.startswith(MARK + " stage "):
            last = line[len(MARK + " stage "):].strip()
    return last


def _describe_stage(stage, prototxt):
    if not stage:
        return ""
    word = stage.split()[0]
    if word == "forward":
        parts = stage.split(None, 2)
        return "in the forward pass at layer %r" % (parts[2] if len(parts) > 2 else "?")
    return {
        "import": "while importing pycaffe",
        "load": "while setting up the net from %s" % os.path.basename(prototxt),
        "weights": "while loading the weights",
        "reshape": "while reshaping the net to the input shapes",
        "save": "while saving the outputs",
        "done": "after finishing",
    }.get(word, "at stage %s" % stage)


def _summary(prototxt):
    try:
        from tracecap.runtimes import summarize
        return summarize(prototxt)
    except Exception:
        return None


def _layer_named_in(msg, summary):
    """A layer name the message itself mentions ("layer 'conv1'", "for layer conv1")."""
    if summary is None:
        return None
    for m in re.finditer(r"layer[\s:]+'?\"?([^\s'\";,)]+)", msg):
        if m.group(1) in summary.layer_type:
            return m.group(1)
    return None


def _signal_name(code):
    try:
        return signal.Signals(-code).name
    except (ValueError, AttributeError):
        return "signal %d" % -code


def _failure(returncode, log, prototxt):
    lines = log.splitlines()
    stage = _last_stage(log)
    reported = [l[len(MARK + " error "):] for l in lines if l.startswith(MARK + " error ")]
    if returncode == EXIT_REPORTED and reported:
        return RuntimeFailure("Caffe runtime: " + reported[-1], log=log)

    fatal = None
    for l in lines:
        m = _GLOG_FATAL.match(l)
        if m:
            fatal = m
            break
    proto_errors = [m.group("msg") for m in map(_PROTOBUF_ERR.match, lines) if m]

    summary = _summary(prototxt)
    layer, where = None, ""
    word = stage.split()[0] if stage else ""
    if word == "load":
        # Net::Init logs "Creating Layer X" once X exists and "Setting up X" once X.SetUp()
        # succeeded; the last of them tells where set-up stopped.
        progress = None
        for l in lines:
            m = _LAYER_PROGRESS.search(l)
            if m:
                progress = (m.group("what"), m.group("name"))
        if fatal is not None:
            layer = _layer_named_in(fatal.group("msg"), summary)
        if layer is None and progress is not None:
            what, name = progress
            if what.startswith("Creating"):
                layer = name
            else:
                nxt = summary.layer_after(name) if summary is not None else None
                layer = nxt
                if nxt is None:
                    where = "after setting up layer %r" % name
        if layer is not None:
            where = "while setting up layer %r" % layer
        elif not where:
            where = _describe_stage(stage, prototxt)
    elif word == "forward":
        parts = stage.split(None, 2)
        layer = parts[2] if len(parts) > 2 else None
        where = "in the forward pass at layer %r" % layer
    else:
        if fatal is not None:
            layer = _layer_named_in(fatal.group("msg"), summary)
        where = _describe_stage(stage, prototxt) or "before it started"
        if layer is not None:
            where += " of layer %r" % layer if word == "weights" else " (layer %r)" % layer
    if layer is not None and summary is not None and layer in summary.layer_type:
        where += " (%s)" % summary.layer_type[layer]

    if returncode < 0:
        how = "aborted (%s)" % _signal_name(returncode) if -returncode == signal.SIGABRT \
            else "crashed (%s)" % _signal_name(returncode)
    else:
        how = "failed (exit code %d)" % returncode
    parts = ["Caffe %s %s" % (how, where)]
    if fatal is not None:
        detail = fatal.group("msg").strip()
        if "(known types:" in detail:  # unknown layer type: the list of every type is in .log
            detail = detail.split("(known types:")[0].strip()
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        parts.append(": %s [%s]" % (detail, fatal.group("src")))
    else:
        tail = [l for l in lines if l.strip() and not l.startswith(MARK)][-1:]
        if tail:
            parts.append(": " + tail[0].strip()[:400])
    if proto_errors:
        parts.append(" (protobuf: %s)" % proto_errors[0][:300])
    err = RuntimeFailure("".join(parts), log=log)
    err.layer = layer
    return err
