"""The ``tracecap`` command line.

Subcommands live in one table, ``COMMANDS``; ``register`` adds one (``convert`` and ``verify``
plug in the same way as ``inspect``).  Any ``TracecapError`` becomes ``tracecap: error: <message>``
on stderr and exit status 2 — users see the reason, not a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

from tracecap.errors import TracecapError


@dataclass
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict = {}


def register(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Decorator: ``run(args) -> exit status`` becomes subcommand ``name``; ``configure`` adds its options."""
    def wrap(run):
        COMMANDS[name] = Command(help, configure, run)
        return run
    return wrap


def _inspect_options(parser):
    parser.add_argument("file", help="checkpoint (.pt, .pth, .pth.tar, .t7, ...), .prototxt or .caffemodel")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


@register("inspect", "show what a checkpoint or Caffe file holds (format, tensors/layers, module tree)",
          _inspect_options)
def _run_inspect(args) -> int:
    if args.file.endswith((".prototxt", ".caffemodel")):
        from tracecap.mappers.caffe.inspect import format_caffe, inspect_caffe
        report = inspect_caffe(args.file)
        print(json.dumps(report, indent=2) if args.json else format_caffe(report))
        return 0
    from tracecap.checkpoint import inspect_checkpoint
    from tracecap.checkpoint.inspect import format_inspection

    report = inspect_checkpoint(args.file)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_inspection(report))
    return 0


def _convert_options(parser):
    parser.add_argument("spec", help="bundled model name (e.g. resnet18), pkg.module:factory, file.py:Class, "
                                     "a Lua Torch7 network (.t7) or a whole-module checkpoint")
    parser.add_argument("--input", action="append", default=[], metavar="NxCxHxW",
                        help="input shape; repeat for several inputs (bundled models know theirs)")
    parser.add_argument("-o", "--outdir", default=".", help="where NAME.prototxt/.caffemodel/.json go")
    parser.add_argument("--dialect", choices=("bvlc", "opencv"), default="bvlc",
                        help="bvlc: BVLC master caffe.proto; opencv: OpenCV 4.x / SSD-style forks")
    parser.add_argument("--verify", action="store_true",
                        help="run the result on every available real runtime and compare with PyTorch")
    parser.add_argument("--weights", metavar="CHECKPOINT",
                        help="load weights from a checkpoint (any PyTorch format, read safely; keys fixed)")
    parser.add_argument("--code", metavar="FILE.py",
                        help="SPEC is a whole-module checkpoint: import the model classes from this file "
                             "of yours (it runs; nothing from the checkpoint does)")
    parser.add_argument("--legacy", metavar="VERSION",
                        help="run the model code with the semantics of PyTorch VERSION (0.3 = 0.1-0.3: bilinear "
                             "upsampling, volatile, .data[0], .cuda() on CPU, Python 2 `/` sizes, `async=` and print "
                             "statements in the file; see the README)")
    parser.add_argument("--fold-bn", action="store_true",
                        help="fold eval BatchNorm into the preceding Convolution/InnerProduct")
    parser.add_argument("--name", help="output file stem (default: the model name)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random example input")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    _report_options(parser)


def _report_options(parser, verify=False):
    parser.add_argument("--per-layer", action="store_true",
                        help="implied by --against" if verify else
                        "compare every Caffe layer's top with the PyTorch activation it stands for and name the "
                        "first layer beyond tolerance, with its file:line (implies --verify)")
    parser.add_argument("--json", action="store_true", help="print the summary (or the per-layer report) as JSON")
    parser.add_argument("--html", metavar="FILE", help="also write the per-layer report as one self-contained HTML "
                                                       "page (implies --per-layer)")


def _show_layers(report, as_json, html):
    from tracecap.layer_report import format_report, ok
    if html:
        from tracecap.html_report import write_html
        write_html(report, report["prototxt"], html)
    if not as_json:
        print(format_report(report))
    return 0 if ok(report) else 1


@register("convert", "capture a PyTorch model and write Caffe .prototxt + .caffemodel", _convert_options)
def _run_convert(args) -> int:
    from tracecap.convert import convert, parse_shape

    per_layer = args.per_layer or bool(args.html)
    summary = convert(args.spec, [parse_shape(s) for s in args.input], args.outdir, dialect=args.dialect,
                      verify=args.verify, seed=args.seed, name=args.name, quiet=args.quiet,
                      weights=args.weights, fold_bn=args.fold_bn, code=args.code, legacy=args.legacy,
                      per_layer=per_layer)
    status = 0 if all(v["ok"] for v in summary["verify"].values()) else 1
    if per_layer:
        status = max(status, _show_layers(summary["per_layer"], args.json, args.html))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['prototxt']}\n{summary['caffemodel']}")
    return status


def _verify_options(parser):
    parser.add_argument("prototxt")
    parser.add_argument("caffemodel")
    parser.add_argument("--runtime", action="append", choices=("opencv", "caffe"),
                        help="runtime to run on (repeat; default: every available one)")
    parser.add_argument("--inputs", metavar="NPZ", help="input arrays by blob name (default: seeded random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--against", metavar="SPEC",
                        help="compare every layer with this PyTorch model (a SPEC as for convert) instead of the "
                             "runtimes with each other; implies --per-layer")
    parser.add_argument("--input", action="append", default=[], metavar="NxCxHxW",
                        help="with --against: input shapes instead of those the prototxt declares")
    parser.add_argument("--weights", metavar="CHECKPOINT", help="with --against: the model's weights")
    parser.add_argument("--code", metavar="FILE.py", help="with --against: as for convert")
    parser.add_argument("--legacy", metavar="VERSION", help="with --against: as for convert")
    parser.add_argument("--fold-bn", action="store_true", help="with --against: the files were converted with "
                                                               "--fold-bn")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    _report_options(parser, verify=True)


@register("verify", "run a Caffe model on every available real runtime and compare their outputs (or every "
                    "layer with its PyTorch model: --against SPEC)", _verify_options)
def _run_verify(args) -> int:
    if args.against:
        from tracecap.convert import parse_shape, verify_against
        report = verify_against(args.prototxt, args.caffemodel, args.against,
                                shapes=[parse_shape(s) for s in args.input], weights=args.weights, code=args.code,
                                fold_bn=args.fold_bn, seed=args.seed, npz=args.inputs, runtime_names=args.runtime,
                                quiet=args.quiet, legacy=args.legacy)
        status = _show_layers(report, args.json, args.html)
        if args.json:
            print(json.dumps(report, indent=2))
        return status
    used = [flag for flag, on in (("--per-layer", args.per_layer), ("--html", args.html), ("--input", args.input),
                                  ("--weights", args.weights), ("--code", args.code), ("--legacy", args.legacy),
                                  ("--fold-bn", args.fold_bn)) if on]
    if used:
        raise TracecapError(f"{', '.join(used)}: only with --against SPEC (the PyTorch model to compare with)")
    from tracecap.verify import format_report, verify

    report = verify(args.prototxt, args.caffemodel, args.runtime, seed=args.seed, npz=args.inputs)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


# ---- tracecap graph: the picture of a converted net (tracecap.picture) -------------------------

def _graph_options(parser):
    parser.add_argument("spec", metavar="SPEC|NET.prototxt",
                        help="a model SPEC (as for convert; captured and mapped in memory) or a Caffe .prototxt "
                             "(or .caffemodel)")
    parser.add_argument("-o", "--output", default="graph.svg", help="the SVG file to write (default: graph.svg)")
    parser.add_argument("--input", action="append", default=[], metavar="NxCxHxW",
                        help="input shape of a SPEC; repeat for several inputs (bundled models know theirs)")
    parser.add_argument("--engine", choices=("auto", "dot", "python"), default="auto",
                        help="layout: graphviz dot when installed (auto), or the pure-Python layout")


@register("graph", "draw a converted net as SVG: layers, blobs, module scopes as clusters", _graph_options)
def _run_graph(args) -> int:
    from tracecap import picture
    from tracecap.convert import parse_shape

    if args.spec.endswith((".prototxt", ".caffemodel")):
        boxes, title = picture.read_prototxt(args.spec), args.spec
    else:
        boxes, title = picture.boxes_from_spec(args.spec, [parse_shape(s) for s in args.input])
    svg, engine = picture.render_svg(boxes, engine=args.engine, title=title)
    picture.write_text(svg, args.output)
    print(f"{args.output} ({len(boxes)} layers, drawn with {engine})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracecap", description="Convert PyTorch models to Caffe.")
    parser.add_argument("--debug", action="store_true", help="print the Python traceback behind an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print the Python traceback behind an error")
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _traceback_if(debug):
    if debug:
        import traceback
        traceback.print_exc()


def run(argv=None) -> int:
    """The ``tracecap`` command (console script, ``python -m tracecap``): ``main`` in a process that ends
    with the command, so the objects set aside from the garbage collector stay set aside
    (``tracecap.collector``)."""
    from tracecap import collector
    collector.for_this_process()
    return main(argv)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except TracecapError as exc:
        _traceback_if(args.debug)
        print(f"tracecap: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: not an error worth a traceback
        sys.stdout = None
        return 0
    except Exception as exc:  # not one of ours: a bug here or in the model's code - still one paragraph
        _traceback_if(args.debug)
        text = " ".join(str(exc).split())[:500]
        print(f"tracecap: error: unexpected {type(exc).__name__}: {text} (a bug in tracecap or in the model's "
              f"code; run with --debug for the traceback)", file=sys.stderr)
        return 2
