"""A real 2018 checkpoint, end to end: safe load -> key fix-ups -> capture -> Caffe -> real runtimes.

legacy_2018-08_chenchingchih_ckpt.t7 is a DataParallel (``module.``-prefixed)
ResNet-20 state dict saved by torch 0.4 on ``cuda:0``, without
``num_batches_tracked``. Its trained weights must come out of Caffe unchanged.
"""
from pathlib import Path

import pytest
import torch

import tracecap
from tracecap import legacy_models as zoo
from tracecap.checkpoint import find_state_dict

from conversion import check

CKPT = Path(__file__).resolve().parents[2] / "shared" / "legacy-checkpoints" / "legacy_2018-08_chenchingchih_ckpt.t7"


@pytest.fixture(scope="module")
def trained_resnet20():
    if not CKPT.is_file():
        pytest.skip(f"real checkpoint not found at {CKPT} (../shared beside the repo)")
    obj = tracecap.load_checkpoint(CKPT)
    state, _ = find_state_dict(obj)
    model = zoo.get_factory("cifar_resnet20")()
    fixed, report = tracecap.fix_state_dict(state, model)
    assert report.ok, str(report)
    model.load_state_dict(fixed)
    return model.eval()


def test_real_checkpoint_converts_and_runs(trained_resnet20, runtime, tmp_path):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = trained_resnet20(x)
    assert logits.std() > 0.1  # trained weights, not zeros
    graph, worst = check(trained_resnet20, (x,), runtime, tmp_path, rel_tol=1e-4)
    assert [b.shape for b in graph.outputs] == [(2, 10)]
    assert sum(n.op == "conv2d" for n in graph.nodes) == 21
