"""Whole models from the bundled zoo, converted and run on real runtimes.

Tolerance: max abs diff <= 1e-4 x max(1, max|ref|) against eager PyTorch.
Reduced widths/depths keep the suite fast where the issue allows it; the
full-size ResNet-50 at 224x224 runs as required.
"""
import json
import os

import pytest

from tracecap import legacy_models as zoo

from conversion import check

MODELS = [
    ("alexnet", {}),
    ("vgg11_bn", {"width": 0.25}),
    ("resnet18", {}),
    ("resnet50", {}),
    ("squeezenet1_1", {}),
    ("densenet121", {"block_config": (2, 2, 2, 2)}),
    ("mobilenet_v2", {}),
    ("inception_net", {}),
    ("shufflenet_v2", {}),
    ("se_resnet", {}),
    ("lenet", {}),
    ("fcn_upsample", {}),
]


@pytest.mark.parametrize("name,kwargs", MODELS, ids=[m[0] for m in MODELS])
def test_model_on_runtime(name, kwargs, runtime, tmp_path):
    model = zoo.build(name, seed=0, **kwargs)
    x = zoo.example_input(name, seed=0, **kwargs)
    graph, worst = check(model, (x,), runtime, tmp_path, rel_tol=1e-4)
    report = os.environ.get("TRACECAP_REPORT")
    if report:  # collects the model table for the README / closing note
        with open(report, "a") as f:
            f.write(json.dumps({"model": name, "kwargs": repr(kwargs), "runtime": runtime,
                                "layers": len(graph.nodes), "max_abs_diff": worst}) + "\n")


def test_resnet18_with_batchnorm_folded_on_runtime(runtime, tmp_path):
    from tracecap import passes
    from conversion import capture, max_diff, run_on, save_both

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
