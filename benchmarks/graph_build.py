"""Graph building must be linear in the number of ops: chains of 3,000, 12,000 and 48,000 ops.

For each chain (``x = x + 1`` repeated, all nodes sharing one name base - the worst case for
naming) prints the capture time, the graph build time (cap.build: builder, clean-up passes,
names) as the median wall time and the least CPU time of ``--repeats`` builds (CPU time is what
to compare on a machine shared with other work), and from one size to the next (x4 ops) the
ratio of CPU times.
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


def measure(n, repeats):
    fn, x = chain(n), torch.zeros(1)
    t0 = time.perf_counter()
    with torch.no_grad(), tracecap.capture() as cap:
        fn(x)
    capture_s = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        graph = cap.build()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    assert len(graph.nodes) == n
    return capture_s, statistics.median(walls), min(cpus)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 12000, 48000])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    measure(100, 1)  # warm-up
    print(f"{'ops':>7} {'capture s':>10} {'build wall s':>12} {'build CPU s':>11} {'CPU ratio vs previous':>22}")
    previous = None
    for n in args.sizes:
        capture_s, wall, cpu = measure(n, args.repeats)
        ratio = f"{cpu / previous:.2f} (target <= 5)" if previous else ""
        print(f"{n:7d} {capture_s:10.3f} {wall:12.3f} {cpu:11.3f} {ratio:>22}")
        previous = cpu


if __name__ == "__main__":
    main()
