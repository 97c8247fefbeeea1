"""Load time of checkpoints with tracecap, relative to ``torch.load(weights_only=True)`` of zip files.

Three checkpoints, written once into a temporary directory:

* a ResNet-50-sized synthetic state dict (~25.6 M float32 values in ~320 tensors, BatchNorm
  buffers included) in the legacy format (tests/checkpoint_fixtures.py writer) and with
  ``torch.save`` (zip) -- target: tracecap(legacy) / torch.load(zip) <= 1.5 (issue 9);
* ResNet-50's state dict (``tracecap.legacy_models``, seed 0; 102 MB) with ``torch.save``;
* VGG-16's state dict (553 MB) with ``torch.save``.

Each round loads every variant once, in a new random order (the machine is noisy; interleaving
exposes every variant to the same load, and shuffling to the same allocator states); the script prints the medians of the rounds and the
ratios to ``torch.load(weights_only=True)`` of the same zip file. Target for the zip files:
tracecap / torch.load <= 1.0 (issue 17). With the optional ``isal`` package (ISA-L's CRC-32) the
zip files are also loaded with zlib's CRC, the fallback, for comparison. Run:
``python benchmarks/load.py [--rounds N] [--mb SIZE] [--no-big] [--check]``.
"""
from __future__ import annotations

import argparse
import random
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
from tracecap.checkpoint import crc, load_checkpoint  # noqa: E402

TARGET_LEGACY = 1.5  # tracecap(legacy) / torch.load(zip)
TARGET_ZIP = 1.0     # tracecap(zip) / torch.load(zip, weights_only=True)


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


def zoo_state_dict(name: str) -> OrderedDict:
    from tracecap import legacy_models as zoo
    return zoo.build(name, seed=0, calibrate=False).state_dict()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def nbytes_of(sd) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


def zlib_crc(fn, *args):
    """``fn(*args)`` with the checkpoint reader's CRC-32 done by zlib instead of ISA-L."""
    saved = crc._fast_crc32, crc.FAST
    crc._fast_crc32, crc.FAST = None, False
    try:
        return fn(*args)
    finally:
        crc._fast_crc32, crc.FAST = saved


def torch_load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def write_files(tmp: Path, args) -> tuple[dict, dict]:
    """{variant: loader} and {file label: description}, the checkpoints written into ``tmp``."""
    variants, described = {}, {}
    sd = make_state_dict(args.mb)
    legacy, zipped = tmp / "synthetic_legacy.pt", tmp / "synthetic_zip.pt"
    legacy.write_bytes(checkpoint_fixtures.legacy_bytes(sd))
    torch.save(sd, zipped)
    check = load_checkpoint(legacy)
    assert all(torch.equal(check[k], v) for k, v in sd.items()), "legacy load returned different values"
    described["synthetic"] = f"{len(sd)} tensors, {nbytes_of(sd) / 1e6:.1f} MB"
    variants["synthetic: tracecap, legacy file"] = lambda: load_checkpoint(legacy)
    variants["synthetic: tracecap, zip file"] = lambda: load_checkpoint(zipped)
    variants["synthetic: torch.load, legacy file"] = lambda: torch.load(legacy, map_location="cpu")
    variants["synthetic: torch.load, zip file"] = lambda: torch_load(zipped)
    for name in ("resnet50",) + (() if args.no_big else ("vgg16",)):
        sd = zoo_state_dict(name)
        path = tmp / f"{name}.pt"
        torch.save(sd, path)
        check = load_checkpoint(path)
        assert all(torch.equal(check[k], v) for k, v in sd.items()), f"{name}: zip load returned different values"
        described[name] = f"{len(sd)} tensors, {nbytes_of(sd) / 1e6:.1f} MB"
        del sd, check
        variants[f"{name}: tracecap, zip file"] = lambda path=path: load_checkpoint(path)
        if crc.FAST:  # the fallback too, for machines without the optional package
            variants[f"{name}: tracecap, zip, zlib CRC"] = lambda path=path: zlib_crc(load_checkpoint, path)
        variants[f"{name}: torch.load, zip file"] = lambda path=path: torch_load(path)
    return variants, described


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--mb", type=float, default=100.0, help="size of the synthetic state dict")
    parser.add_argument("--no-big", action="store_true", help="leave out VGG-16's state dict (553 MB)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio misses its target")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        variants, described = write_files(Path(tmp), args)
        times = {name: [] for name in variants}
        names = list(variants)
        order = random.Random(0)
        for r in range(args.rounds + 1):  # round 0 warms the page cache and allocator
            # a new order each round: a load right after one of the same file reuses its freed heap
            # blocks (no page faults), so a fixed rotation would favour whichever variant follows
            for name in order.sample(names, len(names)):
                t = timed(variants[name])
                if r:
                    times[name].append(t)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{args.rounds} rounds, median, shuffled order; torch {torch.__version__}; "
          f"torch.load with weights_only=True; CRC-32 by {'ISA-L (isal)' if crc.FAST else 'zlib'}")
    ok = True
    for label, what in described.items():
        base = med[f"{label}: torch.load, zip file"]
        print(f"{label}: {what}")
        for name in names:
            if name.startswith(label + ":"):
                print(f"  {name[len(label) + 2:]:<24} {med[name] * 1e3:8.1f} ms   {med[name] / base:5.2f}x torch.load(zip)")
        zip_ratio = med[f"{label}: tracecap, zip file"] / base
        verdict = "meets" if zip_ratio <= TARGET_ZIP else "MISSES"
        print(f"  ratio tracecap(zip) / torch.load(zip): {zip_ratio:.2f}  {verdict} the target <= {TARGET_ZIP}")
        ok = ok and zip_ratio <= TARGET_ZIP
        if f"{label}: tracecap, legacy file" in med:
            ratio = med[f"{label}: tracecap, legacy file"] / base
            verdict = "meets" if ratio <= TARGET_LEGACY else "MISSES"
            print(f"  ratio tracecap(legacy) / torch.load(zip): {ratio:.2f}  {verdict} the target <= {TARGET_LEGACY}")
            ok = ok and ratio <= TARGET_LEGACY
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
