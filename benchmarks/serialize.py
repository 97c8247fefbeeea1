"""Caffemodel write throughput on ResNet-50-sized weights.

    python benchmarks/serialize.py [--runs 7] [--dir DIR] [--check]

Builds ResNet-50's 161 parameter tensors (53 convolutions, 53 batch-norm
gamma/beta pairs, the classifier; 25.56M float32 values, ~102 MB) as a Caffe
net of Convolution, Scale and InnerProduct layers, then times, in one run and
alternating, with the output files removed before every timed write:

* raw  -- the same float32 bytes written with ``ndarray.tofile`` into one file;
* save -- ``writer.save(net, prototxt, caffemodel)``;
* build+save -- ``netspec.to_net(...)`` followed by ``save``;
* build+save_parts -- ``netspec.to_net(..., with_blobs=False)`` followed by
  ``writer.save_parts`` (the path ``caffe.save`` takes; same bytes).

Reports medians and throughput ratios raw/time (targets: save >= 0.5,
build+save_parts >= 0.8); ``--check`` exits 1 when either misses its target.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tracecap.mappers.caffe import writer
from tracecap.mappers.caffe.netspec import Layer, to_net

TARGET = 0.5      # save (a built net) / raw
TARGET_E2E = 0.8  # build+save_parts / raw


def resnet50_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(kind, shape) of ResNet-50's parameters in definition order."""
    shapes = [("conv", (64, 3, 7, 7)), ("bn", (64,))]
    inplanes = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            shapes += [("conv", (width, inplanes, 1, 1)), ("bn", (width,)),
                       ("conv", (width, width, 3, 3)), ("bn", (width,)),
                       ("conv", (width * 4, width, 1, 1)), ("bn", (width * 4,))]
            if b == 0:
                shapes += [("conv", (width * 4, inplanes, 1, 1)), ("bn", (width * 4,))]
            inplanes = width * 4
    shapes.append(("fc", (1000, 2048)))
    return shapes


def build_layers(seed: int = 0) -> list[Layer]:
    rng = np.random.default_rng(seed)
    layers, bottom = [], "data"
    for i, (kind, shape) in enumerate(resnet50_shapes()):
        name = f"{kind}{i}"
        if kind == "conv":
            layers.append(Layer("Convolution", name, [bottom], [name],
                                {"num_output": shape[0], "kernel_size": [shape[2]], "bias_term": False},
                                [rng.standard_normal(shape, dtype=np.float32)]))
        elif kind == "bn":
            layers.append(Layer("Scale", name, [bottom], [name], {"bias_term": True},
                                [rng.standard_normal(shape, dtype=np.float32),
                                 rng.standard_normal(shape, dtype=np.float32)]))
        else:
            layers.append(Layer("InnerProduct", name, [bottom], [name], {"num_output": shape[0]},
                                [rng.standard_normal(shape, dtype=np.float32),
                                 rng.standard_normal(shape[:1], dtype=np.float32)]))
        bottom = name
    return layers


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dir", help="where to write (default: a temporary directory)")
    ap.add_argument("--dialect", default="opencv")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 if the save ratio < {TARGET} or the build+save_parts ratio < {TARGET_E2E}")
    args = ap.parse_args(argv)
    if args.runs < 5:
        ap.error("--runs must be at least 5")

    layers = build_layers()
    arrays = [b for layer in layers for b in layer.blobs]
    n_values = sum(a.size for a in arrays)
    inputs = {"data": (1, 3, 224, 224)}
    net = to_net(layers, name="resnet50", inputs=inputs, dialect=args.dialect)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        raw_path = Path(tmp, "raw.bin")
        proto, model = Path(tmp, "net.prototxt"), Path(tmp, "net.caffemodel")

        def clean():
            for p in (raw_path, proto, model):
                if p.exists():
                    os.unlink(p)

        def raw():
            with open(raw_path, "wb") as f:
                for a in arrays:
                    a.tofile(f)

        def build_and_save():
            writer.save(to_net(layers, name="resnet50", inputs=inputs, dialect=args.dialect), proto, model)

        def build_and_save_parts():
            parts = to_net(layers, name="resnet50", inputs=inputs, dialect=args.dialect, with_blobs=False)
            writer.save_parts(parts.net, parts.blobs, proto, model)

        # both paths must write the same files
        build_and_save()
        expected = (proto.read_bytes(), model.read_bytes())
        clean()
        build_and_save_parts()
        if (proto.read_bytes(), model.read_bytes()) != expected:
            raise SystemExit("save_parts wrote different files than save")
        del expected

        times = {"raw": [], "save": [], "build+save": [], "build+save_parts": []}
        jobs = {"raw": raw, "save": lambda: writer.save(net, proto, model), "build+save": build_and_save,
                "build+save_parts": build_and_save_parts}
        for run in range(args.runs + 1):  # run 0 warms caches and allocator
            for key, job in jobs.items():
                clean()
                t = _timed(job)
                if run:
                    times[key].append(t)
        model_bytes = model.stat().st_size

    med = {k: statistics.median(v) for k, v in times.items()}
    mb = n_values * 4 / 1e6
    print(f"ResNet-50 shapes: {len(arrays)} blobs, {n_values:,} float32 ({mb:.1f} MB); "
          f"caffemodel {model_bytes / 1e6:.1f} MB; median of {args.runs} runs")
    for key in times:
        ratio = med["raw"] / med[key]
        print(f"  {key:<16} {med[key] * 1e3:8.1f} ms  {mb / med[key]:8.0f} MB/s  ratio {ratio:.2f}")
    ratio = med["raw"] / med["save"]
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"save/raw throughput ratio {ratio:.2f} {verdict} the target {TARGET}")
    e2e = med["raw"] / med["build+save_parts"]
    verdict = "meets" if e2e >= TARGET_E2E else "MISSES"
    print(f"build+save_parts/raw throughput ratio {e2e:.2f} {verdict} the target {TARGET_E2E}")
    return 1 if args.check and (ratio < TARGET or e2e < TARGET_E2E) else 0


if __name__ == "__main__":
    sys.exit(main())
