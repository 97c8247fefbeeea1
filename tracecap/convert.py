"""`tracecap convert`: resolve a model spec, capture it, write Caffe files, verify on real runtimes.

A SPEC is a bundled legacy model name (``resnet18``), ``pkg.module:factory``
or ``path/to/file.py:ClassOrFactory``. Loading a module or file runs that
code - it is the user's own model definition, named explicitly on the command
line; checkpoints are never executed (see tracecap.checkpoint).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
import warnings

import torch

from tracecap.errors import TracecapError
from tracecap.legacy.compat import legacy_option


class ConvertError(TracecapError):
    """The convert command could not resolve or run its arguments."""


def parse_shape(text):
    """'1x3x224x224' -> (1, 3, 224, 224)."""
    try:
        dims = tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ConvertError(f"--input {text!r}: expected dimensions like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ConvertError(f"--input {text!r}: dimensions must be positive")
    return dims


def resolve_model(spec, code=None):
    """Return (model, default input shape or None, short name)."""
    from tracecap import legacy_models as zoo
    from tracecap.legacy.checkpoint_spec import resolve_checkpoint_spec
    checkpoint = resolve_checkpoint_spec(spec, code)  # a Torch7 net or whole-module file, else None
    if checkpoint is not None:
        return checkpoint
    if spec in zoo.NAMES:
        return zoo.build(spec, seed=0), zoo.input_shape(spec), spec
    if ":" not in spec:
        raise ConvertError(f"unknown model {spec!r}: use a bundled name ({', '.join(zoo.NAMES)}), "
                           f"pkg.module:factory or path/file.py:Class")
    where, attr = spec.rsplit(":", 1)
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise ConvertError(f"model file not found: {where}")
        from tracecap.legacy.source_rewrite import ModelFileLoader  # Python 2 syntax rewritten under compat
        mod_name = "tracecap_user_" + os.path.splitext(os.path.basename(where))[0]
        loader_spec = importlib.util.spec_from_file_location(mod_name, where, loader=ModelFileLoader(mod_name, where))
        module = importlib.util.module_from_spec(loader_spec)
        sys.path.insert(0, os.path.dirname(os.path.abspath(where)))
        try:
            loader_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ConvertError(f"cannot import {where!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConvertError(f"{where} has no attribute {attr!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ConvertError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model, None, attr.lower()


def forward_failure(exc, model, shapes):
    """A ConvertError for a forward that raised: the error, where in the user's code, in which module."""
    from tracecap.recorder import _file_kind
    names = {id(m): name for name, m in model.named_modules()}
    where, scope = None, None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if _file_kind(frame.f_code.co_filename) == "user" and frame.f_code.co_filename != __file__:
            where = f"{os.path.basename(frame.f_code.co_filename)}:{tb.tb_lineno}"
        module = frame.f_locals.get("self")
        if frame.f_code.co_name == "forward" and id(module) in names:
            scope = names[id(module)] or "<root>"
        tb = tb.tb_next
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + " ..."
    inputs = ", ".join("x".join(map(str, s)) for s in shapes)
    loc = " (" + " in ".join(p for p in (f"at {where}" if where else None, scope) if p) + ")" if where or scope else ""
    return ConvertError(f"the model's forward failed on input {inputs}: {type(exc).__name__}: {text}{loc}")


def load_weights(model, path, quiet=False):
    """Load a checkpoint's weights into ``model`` safely (no code from the file runs).

    The state dict is found inside checkpoint dicts and whole-module pickles, old keys are
    fixed (``module.``, ``num_batches_tracked``, DenseNet ``norm.1``), and loading is strict:
    a missing or unexpected key is an error that shows the diff.
    """
    from tracecap.checkpoint import find_state_dict, fix_state_dict, load_checkpoint
    obj = load_checkpoint(path)
    state, found = find_state_dict(obj)
    fixed, report = fix_state_dict(state, model)
    if not report.ok:
        raise ConvertError(f"{path}: its weights do not fit the model:\n{report}")
    model.load_state_dict(fixed, strict=True)
    if not quiet:
        print(f"      weights: {len(fixed)} tensors from {path} ({found.source})", file=sys.stderr)
    return report


def _step(n, total, text, quiet):
    if not quiet:
        print(f"[{n}/{total}] {text}", file=sys.stderr, flush=True)


def _verify(graph, inputs, refs, proto, caffemodel, dialect, summary, total, quiet):
    """Run the written files on every available runtime; fill summary["verify"]."""
    import tempfile
    from tracecap import runtimes
    from tracecap.compare import within_tolerance
    from tracecap.verify import runnable
    if not runtimes.available():
        raise ConvertError("--verify: no real runtime is available here (pip install opencv-python-headless, or "
                           "build Caffe with python -m tracecap.runtimes.build_caffe)")
    feed = {b.name: x.numpy() for b, x in zip(graph.inputs, inputs)}
    with tempfile.TemporaryDirectory(prefix="tracecap-verify-") as tmp:
        run_proto, run_model, note = runnable(proto, caffemodel, dialect, tmp)
        usable = runtimes.available("opencv" if note else dialect)
        if not usable:
            raise ConvertError(f"--verify: no runtime reads the {dialect} dialect here (available: "
                               f"{', '.join(runtimes.available())})")
        _step(4, total, f"verifying on {', '.join(usable)}" + (f" ({note})" if note else ""), quiet)
        if note:
            summary["verify_note"] = note
        for rt in usable:
            got = runtimes.run(run_proto, run_model, feed, runtime=rt, blobs=summary["outputs"])
            worst, ok = 0.0, True
            for bname, ref in zip(summary["outputs"], refs):
                ref = ref.detach().numpy()
                diff, agrees = within_tolerance(got[bname].reshape(ref.shape), ref)
                worst, ok = max(worst, diff), ok and agrees
            summary["verify"][rt] = {"max_abs_diff": worst, "ok": ok}
            if not quiet:
                print(f"      {rt}: max abs diff {worst:.3g} {'ok' if ok else 'TOO LARGE'}", file=sys.stderr)


@legacy_option
def convert(spec, shapes, outdir, dialect="opencv", verify=False, seed=0, name=None, quiet=False, weights=None,
            fold_bn=False, code=None):
    """Run the whole pipeline; return a summary dict (also written as OUTDIR/NAME.json).

    ``legacy="0.3"`` runs it all (loading the model file, building, the reference forward, the capture)
    under ``tracecap.legacy.compat``."""
    from tracecap import capture
    from tracecap.mappers import caffe

    total = 4 if verify else 3
    t0 = time.perf_counter()
    _step(1, total, f"loading model {spec}", quiet)
    model, default_shape, short = resolve_model(spec, code)
    if weights is not None:
        load_weights(model, weights, quiet)
    name = name or short
    model.eval()
    if not shapes:
        if default_shape is None:
            raise ConvertError("give the input shape(s) with --input, e.g. --input 1x3x224x224")
        shapes = [tuple(default_shape)]
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(s, generator=gen) for s in shapes]

    _step(2, total, f"capturing forward on input(s) {', '.join('x'.join(map(str, s)) for s in shapes)}", quiet)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            reference = model(*inputs)
        except Exception as exc:
            raise forward_failure(exc, model, shapes) from exc
        with capture() as cap:
            model(*inputs)
    graph = cap.graph
    if fold_bn:
        from tracecap.passes import fold_batchnorm, run_passes
        run_passes(graph, [fold_batchnorm])
    refs = reference if isinstance(reference, (list, tuple)) else [reference]

    os.makedirs(outdir, exist_ok=True)
    proto = os.path.join(outdir, f"{name}.prototxt")
    caffemodel = os.path.join(outdir, f"{name}.caffemodel")
    _step(3, total, f"writing {proto} and {caffemodel} ({dialect} dialect, {len(graph.nodes)} ops)", quiet)
    caffe.save(graph, proto, caffemodel, dialect=dialect)
    summary = {"model": spec, "weights": weights and os.fspath(weights), "dialect": dialect,
               "prototxt": proto, "caffemodel": caffemodel,
               "inputs": {b.name: list(b.shape) for b in graph.inputs},
               "outputs": [b.name for b in graph.outputs], "ops": len(graph.nodes), "verify": {}}
    if verify:
        _verify(graph, inputs, refs, proto, caffemodel, dialect, summary, total, quiet)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    with open(os.path.join(outdir, f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
