"""End-to-end conversion race: ``tracecap convert`` against ``torch.onnx.export(..., dynamo=False)``.

Each run is a FRESH process (imports, model construction, one forward and writing the files all count,
as a user would see them). Both sides build the same bundled model (``legacy_models.build(name,
seed=0)``, what ``tracecap convert NAME`` builds) with the same input. Runs alternate between the
converters round by round (the machine is shared; interleaving exposes both to the same load); the
medians and their ratio are printed. Target (issue #17): tracecap <= 0.15x onnx export on ResNet-50.

The legacy ONNX exporter needs the ``onnx`` package (``pip install onnx``); without it that column
says so and only tracecap is timed.

Usage: python benchmarks/convert_race.py [--rounds 9] [--models resnet18,resnet50]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

# Both children import torch first (the same cost for every converter, and most of a cold start on a
# loaded machine), then time the conversion itself: importing the converter, building the model, the
# forward(s), writing the files. The child prints those seconds; the parent also keeps the wall time.
ONNX_CHILD = r"""
import sys, time, warnings
warnings.simplefilter("ignore")
import torch
t0 = time.perf_counter()
from tracecap import legacy_models as zoo
name, out = sys.argv[1], sys.argv[2]
model = zoo.build(name, seed=0)
x = zoo.example_input(name, seed=0)
with torch.no_grad():
    torch.onnx.export(model, (x,), out, dynamo=False)
print(time.perf_counter() - t0)
"""

TRACECAP_CHILD = r"""
import sys, time
import torch
t0 = time.perf_counter()
from tracecap import cli
status = cli.main(["convert", sys.argv[1], "-o", sys.argv[2], "--quiet"])
print(time.perf_counter() - t0)
sys.exit(status)
"""


def _tracecap(name, outdir):
    return [sys.executable, "-c", TRACECAP_CHILD, name, outdir]


def _onnx(name, outdir):
    return [sys.executable, "-c", ONNX_CHILD, name, os.path.join(outdir, name + ".onnx")]


def run_once(cmd):
    """(seconds after `import torch` as the child measured them, wall seconds of the process)."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1]), wall


def onnx_available():
    probe = subprocess.run([sys.executable, "-c", "import onnx"], capture_output=True)
    return probe.returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved fresh-process runs per converter (>= 9)")
    ap.add_argument("--models", default="resnet18,resnet50")
    args = ap.parse_args()
    contenders = {"tracecap": _tracecap}
    if onnx_available():
        contenders["onnx"] = _onnx
    else:
        print("torch.onnx.export (legacy) needs the `onnx` package: not installed, timing tracecap alone")
    print(f"fresh process per run, medians of {args.rounds} interleaved rounds")
    print("seconds after `import torch` in the child (wall time of the whole process in brackets)")
    print(f"{'model':9} " + " ".join(f"{k + ' s':>16}" for k in contenders) + f" {'tracecap/onnx':>14} {'target':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            times = {k: [] for k in contenders}
            walls = {k: [] for k in contenders}
            for _ in range(args.rounds):
                for kind, make in contenders.items():
                    inner, wall = run_once(make(name, tmp))
                    times[kind].append(inner)
                    walls[kind].append(wall)
            med = {k: statistics.median(v) for k, v in times.items()}
            wmed = {k: statistics.median(v) for k, v in walls.items()}
            ratio = f"{med['tracecap'] / med['onnx']:14.3f}" if "onnx" in med else f"{'-':>14}"
            target = "0.15" if name == "resnet50" else "-"
            print(f"{name:9} " + " ".join(f"{med[k]:7.3f} ({wmed[k]:6.2f})" for k in contenders)
                  + f" {ratio} {target:>6}", flush=True)


if __name__ == "__main__":
    main()
