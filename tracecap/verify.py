"""`tracecap verify`: run a Caffe model on every available real runtime and compare them.

For a model converted elsewhere, or to check that OpenCV and Caffe agree on one of ours:
the inputs are seeded random arrays of the shapes the prototxt's Input layers declare
(or arrays from an .npz), each runtime runs the net, and every output is compared with
the first runtime's: max abs diff against 1e-4 x max(1, max|ref|).
"""
from __future__ import annotations

import numpy as np

from tracecap.compare import MODEL_TOLERANCE, within_tolerance  # noqa: F401  (re-exported)
from tracecap.errors import TracecapError


def input_shapes(prototxt):
    """{input blob: shape} from the prototxt's Input layers (legacy `input_shape` too)."""
    from tracecap.mappers.caffe.inspect import parse_any_dialect
    net, _ = parse_any_dialect(prototxt)
    shapes = {}
    for layer in net.layer:
        if layer.type == "Input":
            for top, shape in zip(layer.top, layer.input_param.shape):
                shapes[top] = tuple(shape.dim)
    for name, shape in zip(net.input, net.input_shape):
        shapes[name] = tuple(shape.dim)
    if not shapes:
        raise TracecapError(f"{prototxt}: no Input layer declares the input shapes")
    return shapes


def verify(prototxt, caffemodel, runtime_names=None, seed=0, npz=None, rel_tol=MODEL_TOLERANCE):
    """Return {"inputs", "runtimes", "outputs": {blob: {runtime: max abs diff vs the first}}, "ok"}."""
    from tracecap import runtimes
    from tracecap.mappers.caffe.inspect import parse_any_dialect
    dialect = parse_any_dialect(prototxt)[1]
    if not runtimes.available(dialect) and runtimes.available():
        raise TracecapError(f"{prototxt} is in the {dialect} dialect (pooling round_mode), which no runtime here "
                            f"reads; convert with --dialect opencv to verify it here")
    names = list(runtime_names or runtimes.available(dialect))
    if not names:
        raise TracecapError("no real runtime is available (pip install opencv-python-headless, or build Caffe "
                            "with python -m tracecap.runtimes.build_caffe)")
    if npz is not None:
        with np.load(npz) as data:
            feed = {k: data[k].astype(np.float32) for k in data.files}
    else:
        rng = np.random.default_rng(seed)
        feed = {k: rng.standard_normal(s).astype(np.float32) for k, s in input_shapes(prototxt).items()}
    results = {rt: runtimes.run(prototxt, caffemodel, feed, runtime=rt) for rt in names}
    ref_name = names[0]
    report = {"inputs": {k: list(v.shape) for k, v in feed.items()}, "runtimes": names, "outputs": {}, "ok": True}
    for blob, ref in results[ref_name].items():
        row = {"shape": list(ref.shape), "max_abs": float(np.abs(ref).max()) if ref.size else 0.0}
        for rt in names[1:]:
            other = results[rt].get(blob)
            if other is None or other.shape != ref.shape:
                row[rt] = None
                report["ok"] = False
                continue
            row[rt], ok = within_tolerance(other, ref, rel_tol)
            report["ok"] &= ok
        report["outputs"][blob] = row
    return report


def format_report(report):
    names = report["runtimes"]
    head = f"runtimes: {', '.join(names)}" + (f" (differences against {names[0]})" if len(names) > 1 else "")
    lines = [head]
    for blob, row in report["outputs"].items():
        diffs = "  ".join(f"{rt}: {'missing' if row[rt] is None else f'{row[rt]:.3g}'}" for rt in names[1:])
        lines.append(f"  {blob}  {'x'.join(map(str, row['shape']))}  max|out| {row['max_abs']:.3g}  {diffs}".rstrip())
    lines.append("ok" if report["ok"] else "MISMATCH")
    return "\n".join(lines)
