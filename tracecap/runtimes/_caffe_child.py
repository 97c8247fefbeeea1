"""Child side of the Caffe runtime: load one net, run it once, save the blobs asked for.

Started by caffe_runtime.py as ``python _caffe_child.py REQUEST.json`` (by file path, so that
no tracecap module is imported here: tracecap's own ``caffe`` proto package must never meet
pycaffe's caffe_pb2 in one process).  A Caffe CHECK failure aborts this process; the parent
reads the log this process wrote to stderr.  Lines starting with MARK are ours:

    MARK stage <name> [<detail>]   what we are about to do (import, load, weights, reshape,
                                    forward <layer index> <layer name>, save, done)
    MARK error <message>            a failure we caught in Python; exit code 3
"""
import json
import os
import sys

MARK = "tracecap-child:"
EXIT_REPORTED = 3


def stage(name, detail=""):
    sys.stderr.write("%s stage %s%s\n" % (MARK, name, (" " + detail) if detail else ""))
    sys.stderr.flush()


def fail(message):
    sys.stderr.write("%s error %s\n" % (MARK, " ".join(str(message).split())))
    sys.stderr.flush()
    sys.exit(EXIT_REPORTED)


def main(request_path):
    with open(request_path) as f:
        req = json.load(f)

    stage("import")
    import numpy as np
    sys.path.insert(0, req["pydir"])
    try:
        import caffe
    except Exception as e:  # ImportError, or an ABI problem surfacing as another error
        fail("cannot import caffe from %s: %s: %s" % (req["pydir"], type(e).__name__, e))
    caffe.set_mode_cpu()

    stage("load")
    try:
        net = caffe.Net(req["prototxt"], caffe.TEST)
    except Exception as e:
        fail("Caffe refused the prototxt %s: %s" % (req["prototxt"], e))

    stage("weights")
    try:
        net.copy_from(req["caffemodel"])
    except Exception as e:
        fail("Caffe refused the weights %s: %s" % (req["caffemodel"], e))

    stage("reshape")
    with np.load(req["input_file"]) as data:
        arrays = [np.ascontiguousarray(data["arr_%d" % i], dtype=np.float32)
                  for i in range(len(req["inputs"]))]
    net_inputs = list(net.inputs)
    for name, x in zip(req["inputs"], arrays):
        if name not in net_inputs:
            fail("%r is not an input of the net; its inputs are %s" % (name, net_inputs))
    missing = [n for n in net_inputs if n not in req["inputs"]]
    if missing:
        fail("no value given for input(s) %s" % ", ".join(map(repr, missing)))
    for name, x in zip(req["inputs"], arrays):
        blob = net.blobs[name]
        if tuple(blob.data.shape) != tuple(x.shape):
            blob.reshape(*x.shape)
    net.reshape()
    for name, x in zip(req["inputs"], arrays):
        net.blobs[name].data[...] = x

    # One layer at a time, so that a CHECK failure during the forward pass can be pinned
    # to its layer by the last MARK line.
    names = list(net._layer_names)
    for i, lname in enumerate(names):
        stage("forward", "%d %s" % (i, lname))
        net._forward(i, i)

    stage("save")
    wanted = req["blobs"] if req["blobs"] is not None else list(net.outputs)
    unknown = [b for b in wanted if b not in net.blobs]
    if unknown:
        fail("no blob named %s in the net (it has %s)"
             % (", ".join(map(repr, unknown)), ", ".join(list(net.blobs)[:50])))
    out = [np.array(net.blobs[b].data, dtype=np.float32, copy=True) for b in wanted]
    np.savez(req["output_file"], *out)
    with open(req["output_file"] + ".json", "w") as f:
        json.dump(wanted, f)
    stage("done")


if __name__ == "__main__":
    # Running by path put this folder first on sys.path; nothing here is needed by the child.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path.pop(0)
    main(sys.argv[1])
