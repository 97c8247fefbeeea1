"""A per-op case's graph computed from its canonical op names and params alone
(``tracecap.ops.reference``, what the mappers see) must give the eager output: this checks the
signature table, the aliases and the reference executor's entry for each op a case uses."""
import torch

from tracecap.ops import reference

from conversion import capture


def check_reference_replay(c, atol=1e-5):
    graph, eager = capture(c.model, *c.inputs)
    eager = list(eager) if isinstance(eager, (list, tuple)) else [eager]
    with torch.no_grad():
        outs = reference.run(graph, *c.inputs)
    assert len(outs) == len(eager)
    for got, want in zip(outs, eager):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=atol * max(1.0, float(want.abs().max())), rtol=0, equal_nan=True), \
            (got - want).abs().max()
