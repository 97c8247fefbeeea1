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
