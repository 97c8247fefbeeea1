"""Capture overhead: time and peak memory of `with capture(): model(x)` against a plain `model(x)`.

Targets (issue #17): ResNet-50 capture <= 1.2x the plain forward, ResNet-18 <= 1.3x, peak RSS <= 1.05x.
Three modes, timed in one child process per model, interleaved round by round (the machine is shared
and noisy; interleaving exposes every mode to the same load), medians compared:

* plain     - the forward alone;
* mechanism - the floor: ``sys.settrace`` with a tracer that follows nothing plus the no-op
  TorchFunctionMode (every op becomes a Python frame), nothing recorded;
* capture   - ``tracecap.capture()``.

Peak RSS (``VmHWM``): plain and capture each in a fresh child, one forward after a warm-up.
Usage: python benchmarks/capture_overhead.py [--repeats 11] [--models resnet18,resnet50]
"""
import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, warnings
import torch
warnings.simplefilter("ignore")
import tracecap
from tracecap import legacy_models as zoo
from tracecap.surfacer import Surfacer
name, mode, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
model = zoo.build(name, seed=0, calibrate=False)
x = torch.randn(zoo.input_shape(name))

def plain():
    model(x)

def _nothing(frame, event, arg):
    return None

def mechanism():
    with Surfacer():
        sys.settrace(_nothing)
        try:
            model(x)
        finally:
            sys.settrace(None)

def captured():
    with tracecap.capture() as cap:
        model(x)
    return cap

def hwm_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))

modes = {"plain": plain, "mechanism": mechanism, "capture": captured}
out = {}
with torch.no_grad():
    model(x)  # warm-up (allocator, kernels, lazy imports)
    if mode == "time":
        captured()
        times = {k: [] for k in modes}
        for _ in range(repeats):
            for kind, fn in modes.items():
                t0 = time.perf_counter(); fn(); times[kind].append(time.perf_counter() - t0)
        cap = captured()
        builds = []
        for _ in range(3):
            t0 = time.perf_counter(); cap.build(); builds.append(time.perf_counter() - t0)
        out = {"times": times, "build_s": sorted(builds)[1]}
    else:
        base = hwm_kb()
        modes[mode]()
        out = {"peak_kb": hwm_kb(), "before_kb": base}
print(json.dumps(out))
"""


def measure(name, mode, repeats=1):
    out = subprocess.run([sys.executable, "-c", CHILD, name, mode, str(repeats)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_ratio(name, rounds):
    """Median over fresh-process pairs (plain, capture) of VmHWM(capture) / VmHWM(plain)."""
    plain, cap = [], []
    for _ in range(rounds):
        plain.append(measure(name, "plain")["peak_kb"])
        cap.append(measure(name, "capture")["peak_kb"])
    return statistics.median(plain) / 1024, statistics.median(cap) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11, help="interleaved rounds of the timing (>= 9)")
    ap.add_argument("--rss-rounds", type=int, default=3, help="fresh-process pairs for peak RSS")
    ap.add_argument("--models", default="resnet18,resnet50")
    args = ap.parse_args()
    targets = {"resnet18": 1.3, "resnet50": 1.2}
    print(f"medians of {args.repeats} interleaved rounds; peak RSS: median of {args.rss_rounds} fresh-process pairs")
    print(f"{'model':9} {'plain ms':>8} {'mech ms':>8} {'capt ms':>8} {'mech x':>7} {'capt x':>7} {'target':>6} "
          f"{'plain MB':>8} {'capt MB':>8} {'RSS x':>6} {'build ms':>8}")
    for name in args.models.split(","):
        timing = measure(name, "time", args.repeats)
        med = {k: statistics.median(v) for k, v in timing["times"].items()}
        rp, rc = peak_ratio(name, args.rss_rounds)
        print(f"{name:9} {med['plain'] * 1e3:8.1f} {med['mechanism'] * 1e3:8.1f} {med['capture'] * 1e3:8.1f} "
              f"{med['mechanism'] / med['plain']:7.2f} {med['capture'] / med['plain']:7.2f} {targets.get(name, 0):6.2f} "
              f"{rp:8.0f} {rc:8.0f} {rc / rp:6.3f} {timing['build_s'] * 1e3:8.1f}", flush=True)


if __name__ == "__main__":
    main()
