"""Graph building must be linear in the number of ops: chains of 3,000, 12,000 and 48,000 ops.

For each chain (``x = x + 1`` repeated, all nodes sharing one name base - the worst case for
naming) prints the capture time, the graph build time (cap.build: builder, clean-up passes,
names; median of 3) and, from one size to the next (x4 ops), the ratio of build times.
Target (issue 16): each x4 in ops costs <= x5 in build time; 12,000 ops well under a second.
Usage: python benchmarks/graph_build.py [--sizes 3000 12000 48000]
"""
import argparse
import statistics
import time

import torch

import tracecap


def chain(n):
    def fn(x):
        for _ in range(n):
            x = x + 1
        return x
    return fn


def measure(n):
    fn, x = chain(n), torch.zeros(1)
    t0 = time.perf_counter()
    with torch.no_grad(), tracecap.capture() as cap:
        fn(x)
    capture_s = time.perf_counter() - t0
    builds = []
    for _ in range(3):
        t0 = time.perf_counter()
        graph = cap.build()
        builds.append(time.perf_counter() - t0)
    assert len(graph.nodes) == n
    return capture_s, statistics.median(builds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 12000, 48000])
    args = ap.parse_args()
    torch.set_num_threads(1)
    measure(100)  # warm-up
    print(f"{'ops':>7} {'capture s':>10} {'build s':>8} {'build ratio vs previous (x4 ops)':>34}")
    previous = None
    for n in args.sizes:
        capture_s, build_s = measure(n)
        ratio = f"{build_s / previous:.2f} (target <= 5)" if previous else ""
        print(f"{n:7d} {capture_s:10.3f} {build_s:8.3f} {ratio:>34}")
        previous = build_s


if __name__ == "__main__":
    main()
