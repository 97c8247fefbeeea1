"""Capture overhead: time and peak memory of `with capture(): model(x)` vs plain `model(x)`.

Targets (issue #3): time ratio <= 1.5x for ResNet-50, <= 2.0x for ResNet-18; peak RSS <= 2.0x.
Times: plain and captured forwards alternate in one child process (the machine is noisy; alternating
keeps both exposed to the same load); medians are compared. Peak RSS: each mode in a fresh child.
Usage: python benchmarks/capture_overhead.py [--repeats 7]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, warnings
import torch
warnings.simplefilter("ignore")
import tracecap
from tracecap import legacy_models as zoo
name, mode, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
model = zoo.build(name, seed=0, calibrate=False)
x = torch.randn(zoo.input_shape(name))
def plain():
    model(x)
def captured():
    with tracecap.capture() as cap:
        model(x)
    return cap
times = {"plain": [], "capture": []}
build = None
with torch.no_grad():
    model(x)  # warm-up (allocator, kernels)
    if mode == "time":
        for _ in range(repeats):
            for kind, fn in (("plain", plain), ("capture", captured)):
                t0 = time.perf_counter(); fn(); times[kind].append(time.perf_counter() - t0)
        cap = captured()
        builds = []
        for _ in range(3):
            t0 = time.perf_counter(); cap.build(); builds.append(time.perf_counter() - t0)
        build = sorted(builds)[1]
    else:
        (captured if mode == "capture" else plain)()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"times": times, "peak_kb": peak, "build_s": build}))
"""


def measure(name, mode, repeats):
    out = subprocess.run([sys.executable, "-c", CHILD, name, mode, str(repeats)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"{'model':10} {'plain ms':>9} {'capture ms':>11} {'time ratio':>10} {'target':>6} "
          f"{'plain RSS MB':>12} {'capture RSS MB':>14} {'RSS ratio':>9} {'graph build ms':>14}")
    for name, target in (("resnet18", 2.0), ("resnet50", 1.5)):
        timing = measure(name, "time", args.repeats)
        tp, tc = statistics.median(timing["times"]["plain"]), statistics.median(timing["times"]["capture"])
        rp = measure(name, "plain", 1)["peak_kb"] / 1024
        rc = measure(name, "capture", 1)["peak_kb"] / 1024
        print(f"{name:10} {tp * 1e3:9.1f} {tc * 1e3:11.1f} {tc / tp:10.2f} {target:6.1f} "
              f"{rp:12.0f} {rc:14.0f} {rc / rp:9.2f} {timing['build_s'] * 1e3:14.1f}")


if __name__ == "__main__":
    main()
