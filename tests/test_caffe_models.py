"""Every bundled zoo model, converted and run on both real runtimes.

Tolerance: max abs diff <= 1e-4 x max(1, max|ref|) against eager PyTorch. The 2017
torchvision zoo runs at full size (VGG-19 at 224x224, Inception v3 at 299x299); the other
models at their default sizes.

Memory and time: one model is alive at a time. The module-scoped ``converted`` fixture
builds a model, captures it and writes both dialects once (``conversion.capture`` and
``save_both``, which also checks that the dialects differ only where they should); both
runtimes then run those files; pytest finishes a model's runtimes before it builds the next
and the fixture deletes the files. With ``TRACECAP_REPORT=path`` each run appends a JSON
line (model, input, layers, params, convert seconds, runtime, max abs diff) from which
``tools/zoo_table.py`` writes the README's table.
"""
import json
import os
import shutil
import time

import pytest
import torch

from tracecap import legacy_models as zoo
from tracecap.mappers import caffe

from conversion import assert_dialects_differ_only_where_expected, capture, max_diff, run_on, save_both

# brocolli-caffe reads a caffemodel through a protobuf stream capped at 512 MiB
# (src/caffe/util/io.cpp: SetTotalBytesLimit(536870912)); the Caffe runtime copies the blobs of
# bigger files (VGG-16/19) itself, so they run too - the VGGs here are that path's test.
CAFFE_MODEL_LIMIT = 536870912


def _well_scaled(out):
    """Logits of a seeded zoo model: finite, neither vanishing nor exploding."""
    assert torch.isfinite(out).all()
    assert 0.05 < out.std().item() < 50.0 and out.abs().max().item() < 1e3


@pytest.fixture(scope="module", params=zoo.NAMES)
def converted(request, tmp_path_factory):
    name = request.param
    model = zoo.build(name, seed=0)
    x = zoo.example_input(name, seed=0)
    started = time.perf_counter()
    graph, eager = capture(model, x)
    captured = time.perf_counter() - started
    _well_scaled(eager)
    folder = tmp_path_factory.mktemp(name)
    paths, seconds = {}, {}
    for dialect in caffe.DIALECTS:  # conversion.save_both, timed per dialect
        paths[dialect] = (folder / f"net.{dialect}.prototxt", folder / f"net.{dialect}.caffemodel")
        started = time.perf_counter()
        caffe.save(graph, *paths[dialect], dialect=dialect)
        seconds[dialect] = time.perf_counter() - started
    assert_dialects_differ_only_where_expected(paths)
    yield {"name": name, "graph": graph, "eager": eager, "inputs": (x,), "paths": paths,
           "params": sum(p.numel() for p in model.parameters()),
           "convert_seconds": captured + seconds["opencv"]}  # what `tracecap convert` does
    del model, graph, eager
    shutil.rmtree(folder, ignore_errors=True)


def test_model_on_runtime(converted, runtime):
    graph, paths = converted["graph"], converted["paths"]
    outs = run_on(runtime, graph, paths, converted["inputs"])
    eager = converted["eager"]
    eager = list(eager) if isinstance(eager, (list, tuple)) else [eager]
    worst = 0.0
    for got, want in zip(outs, eager):
        assert got.size == want.numel(), (got.shape, tuple(want.shape))
        diff, scale = max_diff(got, want)
        assert diff <= 1e-4 * scale, f"{runtime}: max abs diff {diff:.3g} > 1e-4 x {scale:.3g}"
        worst = max(worst, diff)
    _report(converted, runtime, worst)


def _report(converted, runtime, worst, note=None):
    report = os.environ.get("TRACECAP_REPORT")
    if not report:
        return
    row = {"model": converted["name"], "input": list(converted["inputs"][0].shape),
           "layers": len(converted["graph"].nodes), "params": converted["params"],
           "convert_seconds": round(converted["convert_seconds"], 2),
           "runtime": runtime, "max_abs_diff": worst}
    if note:
        row["note"] = note
    with open(report, "a") as f:
        f.write(json.dumps(row) + "\n")


def test_resnet18_with_batchnorm_folded_on_runtime(runtime, tmp_path):
    from tracecap import passes

    model = zoo.build("resnet18", seed=0)
    x = zoo.example_input("resnet18", seed=0)
    graph, eager = capture(model, x)
    assert passes.fold_batchnorm(graph)
    paths = save_both(graph, tmp_path)
    text = paths["opencv"][0].read_text()
    assert 'type: "BatchNorm"' not in text and text.count('type: "Convolution"') == 20
    (got,) = run_on(runtime, graph, paths, (x,))
    diff, scale = max_diff(got, eager)
    assert diff <= 1e-4 * scale, diff


def test_inception_v3_with_transform_input_converts(runtime, tmp_path):
    """The zoo set transform_input=True for the Google weights: ``x[:, c] = x[:, c] * a + b`` on a
    clone - writes into slices (``setitem``), which convert exactly as Slice + Scale + Concat."""
    from conversion import check
    model = zoo.build("inception_v3", seed=0, transform_input=True)
    x = zoo.example_input("inception_v3", seed=0)
    graph, _ = check(model, (x,), runtime, tmp_path, rel_tol=1e-4)
    assert sum(n.op == "setitem" for n in graph.nodes) == 3


def test_vgg16_caffemodel_is_past_caffes_read_limit():
    """So that test_model_on_runtime[vgg16-caffe] exercises the runtime's own blob loader."""
    model = zoo.build("vgg16", seed=0)
    assert sum(p.numel() for p in model.parameters()) * 4 > CAFFE_MODEL_LIMIT
