"""Clean-up passes: identities and dead code leave the graph, real ops stay."""
import torch
import torch.nn.functional as F

import tracecap
from tracecap import passes


def _raw(fn, *inputs):
    with torch.no_grad(), tracecap.capture() as cap:
        fn(*inputs)
    return cap.build(clean=False), cap.build()


def test_identities_removed_but_shape_changes_kept():
    def fn(x):
        y = x.contiguous().float().view(2, 3).detach()
        z = F.dropout(y, 0.5, training=False).clone()
        return z.view(3, 2).sigmoid()
    raw, clean = _raw(fn, torch.randn(2, 3))
    assert "contiguous" not in [n.op for n in clean.nodes]
    assert [n.op for n in clean.nodes] == ["view", "sigmoid"]
    assert clean.nodes[0].bottoms[0] is clean.inputs[0]
    assert len(raw.nodes) > len(clean.nodes)


def test_dead_code_is_removed():
    def fn(x):
        unused = torch.tanh(x) * 3     # computed, never returned
        return x.sigmoid()
    raw, clean = _raw(fn, torch.randn(4))
    assert [n.op for n in raw.nodes] == ["tanh", "mul", "sigmoid"]
    assert [n.op for n in clean.nodes] == ["sigmoid"]


def test_training_dropout_is_not_an_identity():
    raw, clean = _raw(lambda x: F.dropout(x, 0.5, training=True) + 0, torch.randn(4))
    assert "dropout" in [n.op for n in clean.nodes]
    assert not passes.drop_identities(clean)


def test_fold_batchnorm_into_conv_and_linear_keeps_the_numbers():
    import torch.nn as nn
    from tracecap import replay

    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 36, 5), nn.BatchNorm1d(5)).eval()
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), tracecap.capture() as cap:
        ref = model(x)
    graph = cap.graph
    assert passes.fold_batchnorm(graph)
    assert [n.op for n in graph.nodes] == ["conv2d", "relu", "flatten", "linear"]
    assert graph.nodes[0].meta["folded_batchnorm"] == "1"
    (out,) = replay.run(graph, x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert not passes.fold_batchnorm(graph)  # nothing left to fold


def test_fold_batchnorm_leaves_shared_outputs_alone():
    import torch.nn as nn

    conv, bn = nn.Conv2d(3, 3, 1).eval(), nn.BatchNorm2d(3).eval()
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad(), tracecap.capture() as cap:
        y = conv(x)
        bn(y) + y                       # the conv output has a second reader: folding would change it
    assert not passes.fold_batchnorm(cap.graph)
