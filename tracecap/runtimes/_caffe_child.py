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
# Caffe reads a caffemodel through protobuf with a hard-coded 512 MiB limit (io.cpp:
# SetTotalBytesLimit(536870912)); bigger files (VGG-16/19: 553-575 MB) are loaded here instead.
CAFFE_READ_LIMIT = 536870912


def stage(name, detail=""):
    sys.stderr.write("%s stage %s%s\n" % (MARK, name, (" " + detail) if detail else ""))
    sys.stderr.flush()


def fail(message):
    sys.stderr.write("%s error %s\n" % (MARK, " ".join(str(message).split())))
    sys.stderr.flush()
    sys.exit(EXIT_REPORTED)


def _varint(data, pos):
    """Protobuf varint at ``pos`` -> (value, next position). (wire.read_varint's twin: this child
    imports nothing of tracecap, see the module docstring.)"""
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def copy_large_weights(net, path, np):
    """Copy the blobs of a caffemodel too big for Caffe's reader into ``net``, as Net::CopyTrainedLayersFrom
    does: by layer name, blob by blob, counts checked; layers the net lacks are skipped. The file is
    walked field by field (mmap), and only one LayerParameter is parsed at a time."""
    import mmap
    from caffe.proto import caffe_pb2
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos, end = 0, len(data)
        while pos < end:
            key, pos = _varint(data, pos)
            field, wire = key >> 3, key & 7
            if wire == 2:
                size, pos = _varint(data, pos)
                chunk, pos = data[pos:pos + size], pos + size
            elif wire in (0, 1, 5):
                pos = _varint(data, pos)[1] if wire == 0 else pos + (8 if wire == 1 else 4)
                continue
            else:
                fail("%s: unexpected wire type %d at byte %d" % (path, wire, pos))
            if field == 2:
                fail("%s: V1 `layers` weights beyond Caffe's 512 MiB read limit are not supported" % path)
            if field != 100:
                continue
            layer = caffe_pb2.LayerParameter.FromString(chunk)
            if layer.name not in net.params or not len(layer.blobs):
                continue
            targets = net.params[layer.name]
            if len(targets) != len(layer.blobs):
                fail("layer %r: %d blobs in the caffemodel, %d in the net" % (layer.name, len(layer.blobs),
                                                                            len(targets)))
            for i, blob in enumerate(layer.blobs):
                values = np.asarray(blob.data, dtype=np.float32)
                if values.size != targets[i].data.size:
                    fail("layer %r blob %d: %d values in the caffemodel, the net's blob has shape %s"
                         % (layer.name, i, values.size, tuple(targets[i].data.shape)))
                targets[i].data[...] = values.reshape(targets[i].data.shape)


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
    if os.path.getsize(req["caffemodel"]) >= CAFFE_READ_LIMIT:
        copy_large_weights(net, req["caffemodel"], np)
    else:
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
