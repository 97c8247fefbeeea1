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


# Random inputs are made for the declared shapes; beyond this many elements (1 GiB of float32)
# a declared shape is refused rather than allocated.
MAX_INPUT_ELEMENTS = 2 ** 28


def input_shapes(prototxt):
    """{input blob: shape} from the prototxt's Input layers, or from the old deploy form: top-level
    ``input:`` names with ``input_shape {}`` blocks or four ``input_dim:`` values each."""
    from tracecap.mappers.caffe.inspect import parse_any_dialect
    net, _ = parse_any_dialect(prototxt)
    shapes = {}
    for layer in net.layer:
        if layer.type == "Input":
            for top, shape in zip(layer.top, layer.input_param.shape):
                shapes[top] = tuple(shape.dim)
    if net.input_shape:
        shapes.update((name, tuple(shape.dim)) for name, shape in zip(net.input, net.input_shape))
    elif net.input_dim:
        dims = list(net.input_dim)
        if len(dims) != 4 * len(net.input):
            raise TracecapError(f"{prototxt}: {len(net.input)} input(s) but {len(dims)} input_dim values "
                                f"(four per input: N, C, H, W)")
        shapes.update((name, tuple(dims[4 * i:4 * i + 4])) for i, name in enumerate(net.input))
    if not shapes:
        raise TracecapError(f"{prototxt}: no Input layer (nor top-level input/input_dim) declares the input shapes")
    for name, shape in shapes.items():
        count = 1
        for d in shape:
            count *= d
        if not shape or min(shape) <= 0 or count > MAX_INPUT_ELEMENTS:
            raise TracecapError(f"{prototxt}: input {name!r} declares shape {'x'.join(map(str, shape))} "
                                f"({count:,} elements); tracecap verify makes random inputs of positive shapes up "
                                f"to {MAX_INPUT_ELEMENTS:,} elements - pass smaller arrays with --inputs FILE.npz")
    return shapes


def runnable(prototxt, caffemodel, dialect, tmpdir):
    """(prototxt, caffemodel, note) that the available runtimes can run.

    Files of a dialect no runtime here reads (``bvlc``) are translated exactly into ``opencv``
    (pooling ``round_mode`` -> ``ceil_mode``, ``Clip(0, 6)`` -> ``ReLU6``) in ``tmpdir``; ``note``
    says so (None when the files run as they are).
    """
    from tracecap import runtimes
    if runtimes.available(dialect) or not runtimes.available() or dialect != "bvlc":
        return prototxt, caffemodel, None
    from tracecap.mappers.caffe.dialects import translate_files
    proto, model = translate_files(prototxt, caffemodel, tmpdir)
    return proto, model, ("bvlc file run as its exact opencv-dialect translation (pooling round_mode -> "
                          "ceil_mode, Clip(0, 6) -> ReLU6)")


def verify(prototxt, caffemodel, runtime_names=None, seed=0, npz=None, rel_tol=MODEL_TOLERANCE):
    """Return {"inputs", "runtimes", "outputs": {blob: {runtime: max abs diff vs the first}}, "ok"}."""
    import tempfile
    from tracecap.mappers.caffe.inspect import parse_any_dialect
    dialect = parse_any_dialect(prototxt)[1]
    with tempfile.TemporaryDirectory(prefix="tracecap-verify-") as tmp:
        proto, model, note = runnable(prototxt, caffemodel, dialect, tmp)
        report = _verify(proto, model, runtime_names, seed, npz, rel_tol)
    if note:
        report["note"] = note
    return report


def _verify(prototxt, caffemodel, runtime_names, seed, npz, rel_tol):
    from tracecap import runtimes
    names = list(runtime_names or runtimes.available("opencv"))
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
    lines = [head] + ([f"  ({report['note']})"] if report.get("note") else [])
    for blob, row in report["outputs"].items():
        diffs = "  ".join(f"{rt}: {'missing' if row[rt] is None else f'{row[rt]:.3g}'}" for rt in names[1:])
        lines.append(f"  {blob}  {'x'.join(map(str, row['shape']))}  max|out| {row['max_abs']:.3g}  {diffs}".rstrip())
    lines.append("ok" if report["ok"] else "MISMATCH")
    return "\n".join(lines)
