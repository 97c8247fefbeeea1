"""End-to-end conversion race: ``tracecap convert`` against ``torch.onnx.export(..., dynamo=False)``.

Each run is a FRESH process: ``tracecap convert race_models:NAME`` (``cli.run``, what the ``tracecap``
command calls) or a script calling ``torch.onnx.export``, both on the same model from one factory. Runs alternate between
the converters round by round (the machine is shared; interleaving exposes both to the same load);
the medians and their ratios are printed, of the converter's own time (the target's measure) and of
everything after ``import torch``. Target (issue #17): tracecap <= 0.15x onnx export on ResNet-50.

The legacy ONNX exporter needs the ``onnx`` package (``pip install onnx``); without it that column
says so and only tracecap is timed.

Usage: python benchmarks/convert_race.py [--rounds 9] [--models resnet18,resnet50] [--other DIR]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

# Both converters get the same model from one factory module (written into the run's directory):
# the bundled model with seeded weights, BatchNorm calibration skipped (it runs float64 forwards and
# costs several times a conversion; the numbers do not matter here). Each child prints two times:
# the converter's own (importing it, capturing/tracing, writing the files; from the moment the model
# exists) and everything after `import torch` (model construction included).
FACTORY = r"""
import time
import torch
from tracecap import legacy_models as zoo

BUILT_AT = None


def _built(model):
    global BUILT_AT
    BUILT_AT = time.perf_counter()
    return model


def resnet18():
    return _built(zoo.build("resnet18", seed=0, calibrate=False))


def resnet50():
    return _built(zoo.build("resnet50", seed=0, calibrate=False))
"""

ONNX_CHILD = r"""
import sys, time, warnings
warnings.simplefilter("ignore")
import torch
t0 = time.perf_counter()
import race_models
name, out = sys.argv[1], sys.argv[2]
model = getattr(race_models, name)()
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    torch.onnx.export(model, (x,), out, dynamo=False)
end = time.perf_counter()
print(end - race_models.BUILT_AT, end - t0)
"""

TRACECAP_CHILD = r"""
import sys, time
import torch
t0 = time.perf_counter()
import race_models
from tracecap import cli
imported = time.perf_counter() - t0
status = cli.run(["convert", "race_models:" + sys.argv[1], "--input", "1x3x224x224", "-o", sys.argv[2], "--quiet"])
end = time.perf_counter()
print(imported + end - race_models.BUILT_AT, end - t0)
sys.exit(status)
"""


def _tracecap(name, outdir):
    return [sys.executable, "-c", TRACECAP_CHILD, name, outdir], None


def _onnx(name, outdir):
    return [sys.executable, "-c", ONNX_CHILD, name, os.path.join(outdir, name + ".onnx")], None


def _other(path):
    """tracecap imported from ``path`` (a directory holding another checkout's ``tracecap`` package)."""
    def make(name, outdir):
        return [sys.executable, "-c", TRACECAP_CHILD, name, outdir], path
    return make


def run_once(job, cwd):
    """(the converter's seconds, seconds after `import torch`, wall seconds of the process)."""
    cmd, first = job
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [cwd, first, os.environ.get("PYTHONPATH")])))
    # a user's Python caches bytecode; without it (this machine's environment sets the variable) every
    # fresh process recompiles tracecap's sources, while torch's come precompiled from its wheel
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{out.stderr[-2000:]}")
    own, after_torch = map(float, out.stdout.strip().splitlines()[-1].split())
    return own, after_torch, wall


def onnx_available():
    probe = subprocess.run([sys.executable, "-c", "import onnx"], capture_output=True)
    return probe.returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved fresh-process runs per converter (>= 9)")
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--other", metavar="DIR", help="also race the tracecap package found in DIR (another checkout, "
                    "laid out as installed: DIR/tracecap with mappers/ and legacy_models/ inside)")
    args = ap.parse_args()
    contenders = {"tracecap": _tracecap}
    if args.other:
        contenders["other"] = _other(os.path.abspath(args.other))
    if onnx_available():
        contenders["onnx"] = _onnx
    else:
        print("torch.onnx.export (legacy) needs the `onnx` package: not installed, timing tracecap alone")
    print(f"fresh process per run, medians of {args.rounds} interleaved rounds")
    print("seconds: the converter's own (import, capture/trace, write) / after `import torch` (model built too) / "
          "wall of the whole process")
    print(f"{'model':9} " + " ".join(f"{k:>22}" for k in contenders) + f" {'ratio own':>9} {'ratio all':>9} {'target':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "race_models.py"), "w") as f:
            f.write(FACTORY)
        for name in args.models.split(","):
            for make in contenders.values():  # warm-up run, unmeasured: bytecode caches, page cache
                run_once(make(name, tmp), tmp)
            times = {k: ([], [], []) for k in contenders}
            for _ in range(args.rounds):
                for kind, make in contenders.items():
                    for column, value in zip(times[kind], run_once(make(name, tmp), tmp)):
                        column.append(value)
            med = {k: [statistics.median(c) for c in cols] for k, cols in times.items()}
            if "onnx" in med:
                ratios = f"{med['tracecap'][0] / med['onnx'][0]:9.3f} {med['tracecap'][1] / med['onnx'][1]:9.3f}"
            else:
                ratios = f"{'-':>9} {'-':>9}"
            target = "0.15" if name == "resnet50" else "-"
            print(f"{name:9} " + " ".join("{:6.3f} /{:6.3f} /{:6.2f}".format(*med[k]) for k in contenders)
                  + f" {ratios} {target:>6}", flush=True)
            if "other" in med and "onnx" in med:
                print(f"{'':9} other/onnx: own {med['other'][0] / med['onnx'][0]:.3f}, all "
                      f"{med['other'][1] / med['onnx'][1]:.3f}; tracecap/other: own "
                      f"{med['tracecap'][0] / med['other'][0]:.3f}", flush=True)


if __name__ == "__main__":
    main()
