"""What ``--per-layer`` costs on top of a plain ``--verify``, on ResNet-50.

    python benchmarks/per_layer.py [--runs 9] [--runtime opencv --runtime caffe] [--check]

Times ``tracecap.export(resnet50, x, ...)`` with ``verify=True`` and with ``per_layer=True`` (capture,
write, verify; the latter also replays the graph, reads every top once per runtime and compares), and
the verification stage alone: the runtimes run on the outputs (plain verify) against the per-layer
stage as export runs it (Caffe's verify run reading every top, then ``layer_report.build``). Each pair
runs back to back, alternating which goes first. Prints medians and the ratios; target: the whole
per-layer export <= 3x the plain one. ``--check`` exits 1 when it misses.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

TARGET = 3.0


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--runtime", action="append", choices=("opencv", "caffe"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)

    import tracecap
    from tracecap import layer_report, legacy_models, runtimes
    from tracecap.mappers import caffe
    names = args.runtime or runtimes.available("opencv")
    model = legacy_models.build("resnet50", seed=0).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(x)
        with tracecap.capture() as cap:
            model(x)
    graph = cap.graph
    times = {"export --verify": [], "export --per-layer": [], "verify stage": [], "per-layer stage": []}
    with tempfile.TemporaryDirectory(prefix="tracecap-bench-") as tmp:
        proto, model_file = os.path.join(tmp, "r.prototxt"), os.path.join(tmp, "r.caffemodel")
        caffe.save(graph, proto, model_file, dialect="opencv")
        feed = {"x": x.numpy()}
        outputs = [b.name for b in graph.outputs]
        everything = layer_report.every_top(proto)

        def verify_stage():
            return {rt: runtimes.run(proto, model_file, feed, runtime=rt, blobs=outputs) for rt in names}

        def per_layer_stage():   # as export runs it: a never-fusing runtime's verify run reads every top
            shipped = {rt: runtimes.run(proto, model_file, feed, runtime=rt,
                                        blobs=everything if rt in layer_report.NEVER_FUSES else outputs)
                       for rt in names}
            return layer_report.build(graph, proto, model_file, [x], dialect="opencv", runtime_names=names,
                                      deployed=shipped, eager=[eager])

        jobs = {"export --verify": lambda: tracecap.export(model, x, os.path.join(tmp, "a"), verify=True),
                "export --per-layer": lambda: tracecap.export(model, x, os.path.join(tmp, "b"), per_layer=True),
                "verify stage": verify_stage, "per-layer stage": per_layer_stage}
        pairs = (("export --verify", "export --per-layer"), ("verify stage", "per-layer stage"))
        for run in range(args.runs):
            for pair in pairs:               # each pair back to back, alternating which goes first
                for key in (pair if run % 2 == 0 else pair[::-1]):
                    t, out = _timed(jobs[key])
                    times[key].append(t)
                    if key == "export --per-layer":   # the figures are only worth it if the report is right
                        assert all(r["ok"] for r in out["per_layer"]["runtimes"].values()), out["per_layer"]["runtimes"]
            print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                  file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    whole = med["export --per-layer"] / med["export --verify"]
    stage = med["per-layer stage"] / med["verify stage"]
    print(f"ResNet-50, runtimes {', '.join(names)}, medians of {args.runs} interleaved runs:")
    for k, v in med.items():
        print(f"  {k:20s} {v:7.2f} s")
    print(f"  export --per-layer / export --verify: {whole:.2f}x (target <= {TARGET:g}x)")
    print(f"  per-layer stage / verify stage:       {stage:.2f}x")
    return 1 if args.check and whole > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
