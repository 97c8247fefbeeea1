"""Fingerprint what tracecap writes for the bundled zoo and the per-op test cases.

Refactors that must not change behaviour are checked with it: take a snapshot before,
another after, and compare.

    python tools/snapshot_conversions.py -o before.json
    ... change the code ...
    python tools/snapshot_conversions.py --compare before.json

Each entry is the sha256 of the prototxt and the caffemodel of one model in one dialect
(or the refusal message, for a case that does not convert). The zoo is built with seed 0,
the per-op cases come from ``tests/test_caffe_ops.py`` (seeded at import).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _fingerprint(fn, inputs, tmp):
    import torch
    import tracecap
    from tracecap.mappers import caffe
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tracecap.capture() as cap:
            fn(*inputs)
    graph = cap.graph
    out = {}
    for dialect in caffe.DIALECTS:
        proto, model = os.path.join(tmp, f"{dialect}.prototxt"), os.path.join(tmp, f"{dialect}.caffemodel")
        try:
            caffe.save(graph, proto, model, dialect=dialect)
            out[dialect] = [_digest(proto), _digest(model)]
        except tracecap.TracecapError as exc:
            out[dialect] = ["refused", str(exc)]
    return out


def snapshot():
    import torch
    from tracecap import legacy_models as zoo
    torch.set_num_threads(1)
    import test_caffe_ops
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in zoo.NAMES:
            model = zoo.build(name, seed=0)
            result[f"zoo/{name}"] = _fingerprint(model, (zoo.example_input(name, seed=0),), tmp)
        for case_id, model, inputs, _ in test_caffe_ops.CASES:
            result[f"op/{case_id}"] = _fingerprint(model, inputs, tmp)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", help="write the snapshot here (JSON)")
    ap.add_argument("--compare", metavar="BEFORE", help="compare with an earlier snapshot; exit 1 on a difference")
    args = ap.parse_args(argv)
    now = snapshot()
    if args.output:
        with open(args.output, "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        diffs = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        for k in diffs:
            print(f"DIFFERS {k}:\n  before {before.get(k)}\n  after  {now.get(k)}")
        print(f"{len(now)} models, {len(diffs)} differ")
        return 1 if diffs else 0
    if not args.output:
        json.dump(now, sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
