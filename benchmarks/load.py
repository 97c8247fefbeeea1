"""Load time of a ~100 MB legacy-format checkpoint with tracecap, relative to torch.load of zip.

Writes a ResNet-50-sized state dict (~25.6 M float32 values in ~320 tensors, BatchNorm buffers
included) twice: in the legacy format (tests/checkpoint_fixtures.py writer) and with
``torch.save`` (zip).  Each round loads every variant once, in rotating order; the script prints
the median of the rounds and the ratios to ``torch.load`` of the zip file.  Target: the first
ratio <= 1.5.  Run: ``python benchmarks/load.py [--rounds N] [--mb SIZE]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import checkpoint_fixtures  # noqa: E402
from tracecap.checkpoint import load_checkpoint  # noqa: E402


def make_state_dict(target_mb: float) -> OrderedDict:
    """Stages of 3x3 convs plus BatchNorm tensors, scaled to about ``target_mb`` of float32."""
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    stages = [(64, 3), (128, 4), (256, 6), (512, 3)]
    blocks = [(c, i) for c, n in stages for i in range(n)]
    per_block = sum(c * c * 9 * 2 + c * c for c, _ in blocks) * 4
    scale = max(1.0, (target_mb * 1e6 / per_block) ** 0.5)
    for s, (c, i) in enumerate(blocks):
        ch = int(c * scale)
        for name, shape in (("conv1", (ch, ch, 3, 3)), ("conv2", (ch, ch, 3, 3)), ("conv3", (ch, ch, 1, 1))):
            p = f"layer{s}.{i}.{name}"
            sd[p + ".weight"] = torch.randn(shape, generator=g)
            sd[p.replace("conv", "bn") + ".weight"] = torch.ones(ch)
            sd[p.replace("conv", "bn") + ".bias"] = torch.zeros(ch)
            sd[p.replace("conv", "bn") + ".running_mean"] = torch.randn(ch, generator=g)
            sd[p.replace("conv", "bn") + ".running_var"] = torch.rand(ch, generator=g)
            sd[p.replace("conv", "bn") + ".num_batches_tracked"] = torch.tensor(100)
    return sd


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mb", type=float, default=100.0)
    args = parser.parse_args(argv)

    sd = make_state_dict(args.mb)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    with tempfile.TemporaryDirectory() as tmp:
        legacy, zipped = Path(tmp, "legacy.pt"), Path(tmp, "zip.pt")
        legacy.write_bytes(checkpoint_fixtures.legacy_bytes(sd))
        torch.save(sd, zipped)
        variants = {
            "tracecap, legacy file": lambda: load_checkpoint(legacy),
            "tracecap, zip file": lambda: load_checkpoint(zipped),
            "torch.load, legacy file": lambda: torch.load(legacy, map_location="cpu"),
            "torch.load, zip file": lambda: torch.load(zipped, map_location="cpu"),
        }
        check = load_checkpoint(legacy)
        assert all(torch.equal(check[k], v) for k, v in sd.items()), "legacy load returned different values"
        del check
        times = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.rounds + 1):  # round 0 warms the page cache and allocator
            for name in names[r % len(names):] + names[: r % len(names)]:
                t = timed(variants[name])
                if r:
                    times[name].append(t)
    base = statistics.median(times["torch.load, zip file"])
    print(f"state dict: {len(sd)} tensors, {nbytes / 1e6:.1f} MB; {args.rounds} rounds, median; "
          f"torch {torch.__version__}")
    for name in names:
        med = statistics.median(times[name])
        print(f"  {name:<26} {med * 1e3:8.1f} ms   {med / base:5.2f}x torch.load(zip)")
    ratio = statistics.median(times["tracecap, legacy file"]) / base
    print(f"ratio tracecap(legacy) / torch.load(zip): {ratio:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
