"""Conversion time of every bundled zoo model: capture + graph + ``caffe.save``, medians per model.

    python benchmarks/convert_zoo.py [--runs 5] [--models resnet18,lenet]
    python benchmarks/convert_zoo.py --compare /path/to/other/checkout [--rounds 3]

Each model is built once (seeded, eval mode, the sizes ``tests/test_caffe_models.py`` converts), then
converted ``--runs`` times: ``tracecap.capture()`` around the forward, ``cap.graph`` (build + passes),
``caffe.save`` of the opencv dialect into a temporary directory. Prints the median seconds of each
step and of the whole per model, and the total of the medians.

``--compare TREE`` times the same in alternating rounds against another checkout of tracecap (e.g.
``git archive main | tar -x -C /tmp/main``) and prints the ratio this/other per model: the issue asks
for no more than 10 % slower. The other tree is imported through a directory of symlinks laid out
the way ``setup.py`` installs it (``tracecap.mappers`` from ``mappers/``), so nothing is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

MODELS = [("alexnet", {}), ("vgg11_bn", {"width": 0.25}), ("resnet18", {}), ("resnet50", {}),
          ("squeezenet1_1", {}), ("densenet121", {"block_config": (2, 2, 2, 2)}), ("mobilenet_v2", {}),
          ("inception_net", {}), ("shufflenet_v2", {}), ("se_resnet", {}), ("lenet", {}), ("fcn_upsample", {})]
STEPS = ("capture", "graph", "save", "total")


def measure(names, runs):
    """{model: {step: [seconds per run]}} for the tracecap importable here."""
    import torch
    import tracecap
    from tracecap import legacy_models as zoo
    from tracecap.mappers import caffe

    torch.set_num_threads(1)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in MODELS:
            if names and name not in names:
                continue
            model = zoo.build(name, seed=0, **kwargs)
            x = zoo.example_input(name, seed=0, **kwargs)
            rows = times[name] = {s: [] for s in STEPS}
            for _ in range(runs):
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    with tracecap.capture() as cap:
                        model(x)
                    t1 = time.perf_counter()
                    graph = cap.graph
                    t2 = time.perf_counter()
                    caffe.save(graph, os.path.join(tmp, "m.prototxt"), os.path.join(tmp, "m.caffemodel"),
                               dialect="opencv")
                    t3 = time.perf_counter()
                for step, dt in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    rows[step].append(dt)
    return times


def _package_dir(tree, tmp):
    """A directory whose ``tracecap`` package is ``tree``'s, laid out as setup.py installs it."""
    pkg = os.path.join(tmp, "tracecap")
    os.makedirs(pkg)
    for entry in os.listdir(os.path.join(tree, "tracecap")):
        os.symlink(os.path.join(tree, "tracecap", entry), os.path.join(pkg, entry))
    for sub in ("mappers", "legacy_models"):
        if not os.path.exists(os.path.join(pkg, sub)):
            os.symlink(os.path.join(tree, sub), os.path.join(pkg, sub))
    return tmp


def _child(tree, names, runs):
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if tree is not None:
            env["PYTHONPATH"] = _package_dir(os.path.abspath(tree), tmp) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, os.path.abspath(__file__), "--json", "--runs", str(runs)]
        if names:
            cmd += ["--models", ",".join(names)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tmp).stdout
    return json.loads(out.strip().splitlines()[-1])


def _medians(times):
    return {m: {s: statistics.median(v) for s, v in rows.items()} for m, rows in times.items()}


def _print_table(med):
    print(f"{'model':16s}" + "".join(f"{s:>10s}" for s in STEPS))
    for m, row in med.items():
        print(f"{m:16s}" + "".join(f"{row[s]:10.3f}" for s in STEPS))
    print(f"{'sum of medians':16s}" + "".join(f"{sum(r[s] for r in med.values()):10.3f}" for s in STEPS))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--models", default="", help="comma-separated subset of the zoo")
    ap.add_argument("--compare", metavar="TREE", help="another tracecap checkout to time against")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds with --compare")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    if args.json:
        print(json.dumps(measure(names, args.runs)))
        return 0
    if not args.compare:
        _print_table(_medians(measure(names, args.runs)))
        return 0
    mine, other = {}, {}
    for _ in range(args.rounds):  # alternate, so load on a shared machine hits both alike
        for store, tree in ((mine, None), (other, args.compare)):
            for m, rows in _child(tree, names, args.runs).items():
                for s, v in rows.items():
                    store.setdefault(m, {}).setdefault(s, []).extend(v)
    a, b = _medians(mine), _medians(other)
    print("this checkout:")
    _print_table(a)
    print(f"\n{args.compare}:")
    _print_table(b)
    print("\nratio this / other (total):")
    for m in a:
        print(f"  {m:16s} {a[m]['total'] / b[m]['total']:.3f}")
    total_a, total_b = sum(r["total"] for r in a.values()), sum(r["total"] for r in b.values())
    print(f"  {'sum':16s} {total_a / total_b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
