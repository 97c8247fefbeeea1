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
    from tracecap import progress
    from tracecap.checkpoint import find_state_dict, fix_state_dict, load_checkpoint
    obj = load_checkpoint(path, progress=progress.reporter(f"reading {os.path.basename(os.fspath(path))}", quiet=quiet,
                                                           min_total=progress.BIG_FILE_BYTES))
    state, found = find_state_dict(obj)
    fixed, report = fix_state_dict(state, model)
    if not report.ok:
        raise ConvertError(f"{path}: its weights do not fit the model:\n{report}")
    model.load_state_dict(fixed, strict=True)
    if not quiet:
        print(f"      weights: {len(fixed)} tensors from {path} ({found.source})", file=sys.stderr)
    return report


def _shape_text(shapes):
    return ", ".join("x".join(map(str, s)) for s in shapes)


def _as_inputs(args):
    """export's ``args`` (a tensor or a tuple/list of tensors, as torch.onnx.export takes) as a list."""
    inputs = list(args) if isinstance(args, (list, tuple)) else [args]
    bad = [type(a).__name__ for a in inputs if not isinstance(a, torch.Tensor)]
    if bad or not inputs:
        raise ConvertError(f"export: args must be a tensor or a tuple of tensors (the forward's positional "
                           f"inputs), got {', '.join(bad) or 'nothing'}")
    return inputs


def run_and_capture(model, inputs, steps, fold_bn=False):
    """(outputs as a list, cleaned graph): one forward pass, captured - capture changes no number, so its
    outputs are the reference. When that forward raises, the model is run again without tracecap: if it
    fails there too, the model fails on these inputs (``forward_failure`` says where); if not, the error
    is tracecap's and goes up as it is. ``fold_bn``: batch norms folded into the convolutions before them."""
    from tracecap import capture, progress
    from tracecap.errors import TracecapError
    shapes = [tuple(x.shape) for x in inputs]
    steps(f"capturing forward on input(s) {_shape_text(shapes)}")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            with progress.modules_entered(model, quiet=steps.quiet):
                with capture() as cap:
                    reference = model(*inputs)
        except TracecapError:
            raise
        except Exception:
            try:
                model(*inputs)
            except Exception as exc:
                raise forward_failure(exc, model, shapes) from exc
            raise
    refs = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    graph = cap.graph
    if fold_bn:
        from tracecap.passes import fold_batchnorm, run_passes
        run_passes(graph, [fold_batchnorm])
    return refs, graph


def _verify_outputs(graph, inputs, refs, run_files, summary, steps, read_all=False):
    """Run the written files on every runtime that reads them; fill summary["verify"]; return what was read.

    ``read_all``: the per-layer report follows; runtimes that never fuse layers read every top in this
    one run, which the report then reuses instead of running again."""
    from tracecap import runtimes
    from tracecap.compare import within_tolerance
    from tracecap.layer_report import NEVER_FUSES, every_top
    run_proto, run_model, note = run_files
    usable = runtimes.available("opencv" if note else summary["dialect"])
    if not usable:
        raise ConvertError(f"--verify: no runtime reads the {summary['dialect']} dialect here (available: "
                           f"{', '.join(runtimes.available())})")
    steps(f"verifying on {', '.join(usable)}" + (f" ({note})" if note else ""))
    if note:
        summary["verify_note"] = note
    feed = {b.name: x.detach().numpy() for b, x in zip(graph.inputs, inputs)}
    shipped = {}
    everything = list(dict.fromkeys(every_top(run_proto) + summary["outputs"])) if read_all else None
    for rt in usable:
        blobs = everything if read_all and rt in NEVER_FUSES else summary["outputs"]
        got = runtimes.run(run_proto, run_model, feed, runtime=rt, blobs=blobs)
        worst, ok = 0.0, True
        for bname, ref in zip(summary["outputs"], refs):
            ref = ref.detach().numpy()
            diff, agrees = within_tolerance(got[bname].reshape(ref.shape), ref)
            worst, ok = max(worst, diff), ok and agrees
        summary["verify"][rt] = {"max_abs_diff": worst, "ok": ok}
        shipped[rt] = got
        steps.note(f"{rt}: max abs diff {worst:.3g} {'ok' if ok else 'TOO LARGE'}")
    return shipped


def _per_layer(graph, inputs, refs, files, run_files, layers, dialect, shipped, steps, model_name):
    """The per-layer report (tracecap.layer_report) of written files; prints its verdict line per runtime."""
    from tracecap import layer_report, progress
    names = list(shipped) or None
    steps(f"comparing every layer with PyTorch{' on ' + ', '.join(names) if names else ''}")
    tick = progress.reporter("per-layer runs", quiet=steps.quiet)
    report = layer_report.build(graph, *files, inputs, layers=layers, dialect=dialect,
                                runtime_names=names, deployed=shipped, model=model_name, eager=refs,
                                progress=tick, run_files=run_files)
    for rt, r in report["runtimes"].items():
        where = f"first divergence at layer {r['first_divergence']}" if r["first_divergence"] else \
            ("every layer within tolerance" if r["ok"] else "outputs beyond tolerance")
        steps.note(f"{rt}: {where}")
    return report


def _pipeline(model, inputs, path, dialect, verify, per_layer, fold_bn, steps, model_name=None):
    """capture -> (fold BN) -> write -> verify outputs -> per-layer report: what export and convert run.

    The model's and torch's objects are set aside from the garbage collector meanwhile
    (``tracecap.collector``): a full collection walking them cost a third of a conversion."""
    from tracecap import collector
    with collector.older_objects_set_aside():
        return _stages(model, inputs, path, dialect, verify, per_layer, fold_bn, steps, model_name)


def _stages(model, inputs, path, dialect, verify, per_layer, fold_bn, steps, model_name):
    import tempfile
    from tracecap import progress, runtimes
    from tracecap.mappers import caffe
    from tracecap.verify import runnable
    t0 = time.perf_counter()
    refs, graph = run_and_capture(model, inputs, steps, fold_bn)
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    proto, caffemodel = f"{path}.prototxt", f"{path}.caffemodel"
    steps(f"writing {proto} and {caffemodel} ({dialect} dialect, {len(graph.nodes)} ops)")
    layers = caffe.to_layers(graph, dialect)  # once: the files and the per-layer report use the same layers
    caffe.save(graph, proto, caffemodel, dialect=dialect, layers=layers,
               progress=progress.reporter("writing weights", quiet=steps.quiet, min_total=progress.BIG_FILE_BYTES))
    summary = {"dialect": dialect, "prototxt": proto, "caffemodel": caffemodel,
               "inputs": {b.name: list(b.shape) for b in graph.inputs},
               "outputs": [b.name for b in graph.outputs], "ops": len(graph.nodes), "verify": {}}
    if verify or per_layer:
        if not runtimes.available():
            raise ConvertError("--verify: no real runtime is available here (pip install opencv-python-headless, "
                               "or build Caffe with python -m tracecap.runtimes.build_caffe)")
        with tempfile.TemporaryDirectory(prefix="tracecap-verify-") as tmp:
            run_files = runnable(proto, caffemodel, dialect, tmp)
            shipped = _verify_outputs(graph, inputs, refs, run_files, summary, steps, read_all=per_layer)
            if per_layer:
                summary["per_layer"] = _per_layer(graph, inputs, refs, (proto, caffemodel), run_files, layers,
                                                  dialect, shipped, steps, model_name)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def export(model, args, path, dialect="opencv", verify=True, per_layer=False, fold_bn=False, quiet=True):
    """Convert ``model`` run on ``args`` to ``path``.prototxt + ``path``.caffemodel, like torch.onnx.export.

    ``args``: a tensor or a tuple of tensors (the forward's positional inputs). ``verify`` runs the
    files on every available real runtime and compares the outputs with PyTorch; ``per_layer`` also
    compares every layer (``tracecap.layer_report``). Returns the summary: ``prototxt``,
    ``caffemodel``, ``dialect``, ``inputs`` {blob: shape}, ``outputs``, ``ops``, ``verify``
    {runtime: {"max_abs_diff", "ok"}}, ``per_layer`` (the report, when asked) and ``seconds``.
    Failures raise ``tracecap.TracecapError`` subclasses with one clear message (a forward that fails
    on ``args`` names the error, your file:line and the module).
    """
    from tracecap.progress import Steps
    inputs = _as_inputs(args)
    steps = Steps(2 + bool(verify or per_layer) + bool(per_layer), quiet=quiet)
    return _pipeline(model, inputs, path, dialect, verify, per_layer, fold_bn, steps, type(model).__name__)


def example_inputs(shapes, default_shape, seed=0):
    """Seeded random inputs of ``shapes``, else of the model's ``default_shape``; an error without either."""
    if not shapes:
        if default_shape is None:
            raise ConvertError("give the input shape(s) with --input, e.g. --input 1x3x224x224")
        shapes = [tuple(default_shape)]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(s), generator=gen) for s in shapes]


def _seeded(factory_call, seed):
    """Build the model under a fixed torch seed (then restore the caller's RNG): the same SPEC gives the
    same initial weights in convert and in verify --against."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory_call()


def load_model(spec, weights, code, seed, steps):
    """(model in eval mode, its default input shape or None, short name): ``spec`` resolved and built
    under ``seed``, with ``weights`` loaded when given."""
    steps(f"loading model {spec}")
    model, default_shape, short = _seeded(lambda: resolve_model(spec, code), seed)
    if weights is not None:
        load_weights(model, weights, steps.quiet)
    model.eval()
    return model, default_shape, short


@legacy_option
def convert(spec, shapes, outdir, dialect="opencv", verify=False, seed=0, name=None, quiet=False, weights=None,
            fold_bn=False, code=None, per_layer=False):
    """Resolve ``spec``, then ``export`` it: return the summary dict (also written as OUTDIR/NAME.json).

    ``per_layer`` implies ``verify``. ``legacy="0.3"`` runs it all (loading the model file, building,
    the reference forward, the capture) under ``tracecap.legacy.compat``."""
    from tracecap.progress import Steps
    verify = verify or per_layer
    steps = Steps(3 + bool(verify) + bool(per_layer), quiet=quiet)
    t0 = time.perf_counter()
    model, default_shape, short = load_model(spec, weights, code, seed, steps)
    name = name or short
    inputs = example_inputs(shapes, default_shape, seed)
    result = _pipeline(model, inputs, os.path.join(outdir, name), dialect, verify, per_layer, fold_bn, steps, spec)
    summary = {"model": spec, "weights": weights and os.fspath(weights), **result,
               "seconds": round(time.perf_counter() - t0, 3)}
    with open(os.path.join(outdir, f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


@legacy_option
def verify_against(prototxt, caffemodel, spec, shapes=None, weights=None, code=None, fold_bn=False, seed=0,
                   npz=None, runtime_names=None, quiet=False):
    """The per-layer report of existing Caffe files against the PyTorch model ``spec`` (resolved as
    ``convert`` resolves it, built with the same seed). Inputs: ``npz`` arrays by blob name, else
    seeded random ones of ``shapes`` or of the shapes the prototxt declares."""
    from tracecap import layer_report, progress
    from tracecap.mappers import caffe
    from tracecap.mappers.caffe.inspect import parse_any_dialect
    from tracecap.progress import Steps
    from tracecap.verify import input_shapes
    steps = Steps(4, quiet=quiet)
    dialect = parse_any_dialect(prototxt)[1]
    declared = input_shapes(prototxt)
    model, _, _ = load_model(spec, weights, code, seed, steps)
    if npz is not None:
        import numpy as np
        with np.load(npz) as data:
            missing = [k for k in declared if k not in data.files]
            if missing:
                raise ConvertError(f"{npz} has no array for input(s) {', '.join(missing)}")
            inputs = [torch.from_numpy(data[k].astype(np.float32)) for k in declared]
    else:
        if shapes and len(shapes) != len(declared):
            raise ConvertError(f"{len(shapes)} --input shape(s) given; {prototxt} has {len(declared)} input(s) "
                               f"({', '.join(declared)})")
        inputs = example_inputs(shapes or list(declared.values()), None, seed)
    refs, graph = run_and_capture(model, inputs, steps, fold_bn)
    names = [caffe.caffe_name(b) for b in graph.inputs]
    if names != list(declared):
        raise ConvertError(f"the capture of {spec} has input(s) {', '.join(names)}; {prototxt} declares "
                           f"{', '.join(declared)}: these files were not converted from this model")
    steps("mapping the capture to Caffe layers")
    layers = caffe.to_layers(graph, dialect)
    steps("comparing every layer with PyTorch")
    return layer_report.build(graph, prototxt, caffemodel, inputs, layers=layers, dialect=dialect,
                              runtime_names=runtime_names, model=spec, eager=refs,
                              progress=progress.reporter("per-layer runs", quiet=quiet))
