"""The recorder is a good citizen, survives id() reuse, and fails clearly."""
import sys
import threading
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tracecap
from tracecap import replay


def _mode_depth():
    return torch._C._len_torch_function_stack()


def test_previous_tracer_is_chained_and_restored():
    seen = []

    def tracer(frame, event, arg):
        if frame.f_code.co_name == "user_helper":
            seen.append(event)
        return tracer

    def user_helper(x):
        y = x + 1
        return y * 2

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        x = torch.ones(2)
        with tracecap.capture() as cap:
            user_helper(x)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(old)
    assert seen.count("call") == 1 and seen.count("line") >= 2 and "return" in seen
    assert [n.op for n in cap.graph.nodes] == ["add", "mul"]


def test_coverage_stays_active():
    coverage = pytest.importorskip("coverage")
    cov = coverage.Coverage(data_file=None)
    old = sys.gettrace()
    cov.start()
    try:
        tracer = sys.gettrace()
        x = torch.randn(3)
        with tracecap.capture() as cap:
            nn.ReLU()(x)
        assert sys.gettrace() is tracer
    finally:
        cov.stop()
        sys.settrace(old)
    assert [n.op for n in cap.graph.nodes] == ["relu"]


def test_exception_propagates_unchanged_and_nothing_is_left_behind():
    class Boom(RuntimeError):
        pass
    err = Boom("inside forward")

    def forward(x):
        x = x * 2
        raise err

    before, depth = sys.gettrace(), _mode_depth()
    with pytest.raises(Boom) as info:
        with tracecap.capture() as cap:
            forward(torch.ones(1))
    assert info.value is err
    assert sys.gettrace() is before and _mode_depth() == depth
    with pytest.raises(tracecap.CaptureError, match="raised Boom"):
        cap.graph
    with tracecap.capture():  # a new capture works afterwards
        pass


def test_only_the_entering_thread_is_recorded():
    stop = threading.Event()
    counts = []

    def worker():
        a = torch.randn(16, 16)
        n = 0
        while not stop.is_set():
            a = torch.tanh(a @ a) + 1
            n += 1
        counts.append(n)

    def forward(x):
        for _ in range(200):
            x = torch.relu(x - 0.001)
        return x

    t = threading.Thread(target=worker)
    t.start()
    try:
        with tracecap.capture() as cap:
            forward(torch.randn(4))
    finally:
        stop.set()
        t.join()
    assert counts[0] > 0
    ops = {n.op for n in cap.graph.nodes}
    assert ops == {"sub", "relu"}, ops


def test_nested_capture_is_a_clear_error():
    before, depth = sys.gettrace(), _mode_depth()
    x = torch.randn(3)
    with tracecap.capture() as outer:
        with pytest.raises(tracecap.CaptureError, match="nested"):
            with tracecap.capture():
                pass
        torch.relu(x)                      # the outer capture still records after the refusal
    assert sys.gettrace() is before and _mode_depth() == depth
    assert [n.op for n in outer.graph.nodes] == ["relu"]


def test_training_mode_warns_only_where_it_matters():
    model = nn.Sequential(nn.BatchNorm2d(3))
    x = torch.randn(2, 3, 4, 4)
    with pytest.warns(UserWarning, match="training mode"):
        with tracecap.capture():
            model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tracecap.capture():
            nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())(x)   # same in train() and eval()


def test_training_dropout_is_refused_by_the_mapper():
    from tracecap.mappers import caffe
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Dropout(0.5))
    x = torch.randn(1, 3, 4, 4)
    with pytest.warns(UserWarning, match="Sequential captured in training mode"):
        with tracecap.capture() as cap:
            model(x)
    with pytest.raises(tracecap.UnsupportedOpError, match="dropout with training=True"):
        caffe.to_net(cap.graph, "opencv")


def test_id_reuse_stress_thousands_of_temporaries():
    def churn(x):
        for i in range(3000):
            x = x + 0          # a new temporary each time; the old one dies at once in eager code
            if i % 3 == 0:
                x = x * 1.0001
            if i % 5 == 0:
                x.add_(0.5).relu_()
        return x

    x = torch.randn(8)
    with torch.no_grad():
        eager = churn(x.clone())
        with tracecap.capture() as cap:
            churn(x)
    graph = cap.graph
    assert len(graph.nodes) == 3000 + 1000 + 2 * 600
    (out,) = replay.run(graph, x)
    assert torch.allclose(out, eager, atol=1e-5)
    # every node reads exactly the version its predecessor wrote
    for prev, node in zip(graph.nodes, graph.nodes[1:]):
        assert node.bottoms[0] is prev.tops[0]


def test_non_tensor_output_names_the_call():
    def head(x):
        return (x * 2).tolist()
    x = torch.ones(2)
    with tracecap.capture() as cap:
        head(x)
    with pytest.raises(tracecap.CaptureError, match=r"`head\(...\)`.*returned list, not a tensor.*test_capture_rules.py:\d+"):
        cap.graph


def test_tensor_from_outside_torch_is_refused_with_location():
    def forward(x):
        y = torch.from_numpy(x.numpy() * 2)  # leaves torch: not traceable
        return x + y
    x = torch.ones(3)
    with tracecap.capture() as cap:
        forward(x)
    with pytest.raises(tracecap.CaptureError, match=r"op `add`.*test_capture_rules.py:\d+.*`numpy` at .*test_capture_rules.py"):
        cap.graph


def test_write_through_view_is_followed():
    """y[:, :1].relu_() changes y where the view lies: y gets a new version, setitem(y, view)."""
    def forward(x):
        y = x * 1
        y[:, :1].relu_()   # mutates y through a view
        return y + 1
    x = torch.randn(2, 3)
    with torch.no_grad(), tracecap.capture() as cap:
        forward(x)
    assert [n.op for n in cap.graph.nodes] == ["mul", "getitem", "relu", "setitem", "add"]
    assert torch.equal(replay.run(cap.graph, x)[0], forward(x))


def test_write_through_a_transposed_view_is_refused_where_read():
    def forward(x):
        y = x * 1
        y.t()[:1].relu_()  # a column of y: no slice of the view chain tracecap saw
        return y + 1
    x = torch.randn(2, 3)
    with torch.no_grad(), tracecap.capture() as cap:
        forward(x)
    with pytest.raises(tracecap.CaptureError, match=r"op `add` .* reads `mul`, which was changed by op `relu_` "
                                                     r".*test_capture_rules.py:\d+ through a view that is no slice"):
        cap.graph


def test_explicit_inputs_and_outputs():
    a, b = torch.randn(3), torch.randn(3)
    with tracecap.capture() as cap:
        s = a + b
        p = s * a
        q = p.sigmoid()
    graph = cap.build(inputs={"a": a, "b": b}, outputs=[p, q])
    assert [i.name for i in graph.inputs] == ["a", "b"]
    assert [o.name for o in graph.outputs] == ["mul", "sigmoid"]
    outs = replay.run(graph, a, b)
    assert torch.equal(outs[0], p) and torch.equal(outs[1], q)


def test_tuple_list_dict_inputs_and_multiple_outputs():
    class Two(nn.Module):
        def forward(self, pair, extra):
            a, b = pair
            return a + extra["k"], torch.cat([b, a], 0)
    a, b, k = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    m = Two()
    with tracecap.capture() as cap:
        m((a, b), {"k": k})
    g = cap.graph
    assert [i.name for i in g.inputs] == ["pair.0", "pair.1", "extra.k"]  # argument order
    assert len(g.outputs) == 2
    inputs = {"pair.0": a, "pair.1": b, "extra.k": k}
    outs = replay.run(g, *[inputs[i.name] for i in g.inputs])
    assert torch.equal(outs[0], a + k) and torch.equal(outs[1], torch.cat([b, a], 0))


def test_constants_made_in_block_are_folded():
    def forward(x):
        bias = torch.arange(3, dtype=torch.float32) * 2   # depends on no input
        scale = torch.tensor(0.5)
        return (x + bias) * scale
    x = torch.randn(2, 3)
    with tracecap.capture() as cap:
        forward(x)
    g = cap.graph
    assert [n.op for n in g.nodes] == ["add", "mul"]
    consts = [b for b in g.nodes[0].bottoms if b.is_constant]
    assert len(consts) == 1 and torch.equal(consts[0].value, torch.tensor([0.0, 2.0, 4.0]))
    assert torch.allclose(replay.run(g, x)[0], forward(x))


def test_print_and_shape_queries_do_not_become_nodes(capsys):
    def forward(x):
        print(x)
        n = x.shape[0] + x.size(1) + x.dim()
        return x.view(n - 4, -1)
    with tracecap.capture() as cap:
        forward(torch.randn(2, 3))
    assert [n.op for n in cap.graph.nodes] == ["view"]


def test_graph_str_and_to_dict():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    with tracecap.capture() as cap:
        m(torch.randn(1, 1, 5, 5))
    text = str(cap.graph)
    assert "conv2d" in text and "1x2x3x3" in text and "test_capture_rules.py" in text
    d = cap.graph.to_dict()
    import json
    json.dumps(d)
    assert d["nodes"][0]["op"] == "conv2d" and d["nodes"][0]["params"]["weight"] == "%0.weight"
    assert d["inputs"][0]["shape"] == [1, 1, 5, 5]


def test_inference_mode_in_place_ops_are_versioned_by_name():
    """Inference tensors have no _version; relu_/+=/inplace=True must still make new versions."""
    def forward(x):
        y = x * 2
        F.relu(y, True)             # positional inplace flag
        y += x
        z = F.dropout(y, 0.5, False)  # eval dropout, positional training flag: not in place
        return z.relu_() - 1

    x = torch.randn(2, 5)
    with torch.inference_mode():
        eager = forward(x.clone())
        with tracecap.capture() as cap:
            forward(x)
    graph = cap.graph
    assert [n.op for n in graph.nodes] == ["mul", "relu", "add", "relu", "sub"]
    assert any("inference_mode" in w for w in graph.warnings)
    (out,) = replay.run(graph, x)
    assert torch.equal(out, eager)


def test_write_through_data_alias_reaches_the_original():
    """2017 code writes through .data; the original tensor must see the write."""
    def forward(x):
        y = x * 2
        y.data.add_(1)          # .data: shared storage, separate version counter
        z = y.detach()
        z.mul_(3)               # detach(): shared storage and version counter
        return y + 0
    x = torch.randn(4)
    with torch.no_grad():
        eager = forward(x.clone())
        with tracecap.capture() as cap:
            forward(x)
    graph = cap.graph
    assert [n.op for n in graph.nodes] == ["mul", "add", "mul", "add"]
    (out,) = replay.run(graph, x)
    assert torch.allclose(out, eager)


def test_block_level_ops_take_tensors_made_before_the_block_as_named_inputs():
    x = torch.randn(2, 3)
    with tracecap.capture() as cap:
        y = torch.relu(x) * 2
    graph = cap.graph
    assert [b.name for b in graph.inputs] == ["x"] and [n.op for n in graph.nodes] == ["relu", "mul"]
    assert torch.equal(replay.run(graph, x)[0], y)


def test_plain_tensor_attribute_of_a_module_is_a_constant_not_an_input():
    class Normalize(nn.Module):
        def __init__(self):
            super().__init__()
            self.mean = torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1)   # not a registered buffer

        def forward(self, img):
            return img - self.mean
    m = Normalize()
    x = torch.randn(1, 3, 4, 4)
    with tracecap.capture() as cap:
        m(x)
    graph = cap.graph
    assert [b.name for b in graph.inputs] == ["img"]
    assert graph.nodes[0].bottoms[1].kind == "param" and graph.nodes[0].bottoms[1].name == "mean"


def test_closure_tensor_inside_model_code_is_a_constant_with_a_warning():
    scale = torch.tensor([2.0, 3.0])

    def forward(x):
        return x * scale                 # not passed in: a constant of the model
    x = torch.randn(4, 2)
    with tracecap.capture() as cap:
        forward(x)
    graph = cap.graph
    assert [b.name for b in graph.inputs] == ["x"]
    const = graph.nodes[0].bottoms[1]
    assert const.kind == "const" and torch.equal(const.value, scale)
    assert any("not passed in as an input" in w and "treated as a constant" in w for w in graph.warnings)


# ---- entering and leaving like bdb.runcall; generators; the owning thread ---------------------------
@pytest.mark.parametrize("failing", ["surfacer", "tracer"])
def test_a_failed_enter_leaves_nothing_behind(monkeypatch, failing):
    capture_module = sys.modules["tracecap.capture"]

    def boom(*args, **kwargs):
        raise RuntimeError(f"{failing} failed")
    target = (capture_module.Surfacer, "__enter__") if failing == "surfacer" else (capture_module.Recorder, "install")
    monkeypatch.setattr(*target, boom)
    tracer_before, depth_before = sys.gettrace(), _mode_depth()
    with pytest.raises(RuntimeError, match=f"{failing} failed"):
        with tracecap.capture():
            pass
    assert sys.gettrace() is tracer_before and _mode_depth() == depth_before
    monkeypatch.undo()
    x = torch.ones(2)
    with tracecap.capture() as cap:   # the thread is not left marked "already active"
        y = x * 2
    assert [n.op for n in cap.graph.nodes] == ["mul"] and y.sum() == 4


def test_generator_resumes_are_not_new_outer_calls():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    xs = [torch.randn(2, 4)]

    def run_all(net, batches):
        for b in batches:
            yield net(b)
        yield None    # a resume after the model ran

    with torch.no_grad(), tracecap.capture() as cap:
        outs = list(run_all(model, xs))
    assert len(cap.recorder.outer_calls) == 1 and cap.recorder.outer_calls[0].frame_name == "run_all"
    graph = cap.graph
    assert [b.name for b in graph.inputs] == ["batches.0"] and len(graph.outputs) == 1
    torch.testing.assert_close(replay.run(graph, xs[0])[0], outs[0])


def test_a_capture_is_stopped_only_by_its_own_thread():
    cap = tracecap.capture()
    x = torch.ones(3)
    cap.__enter__()
    errors = []
    try:
        y = x * 3
        t = threading.Thread(target=lambda: errors.append(pytest.raises(tracecap.CaptureError, cap.__exit__,
                                                                         None, None, None)))
        t.start()
        t.join()
    finally:
        cap.__exit__(None, None, None)
    assert len(errors) == 1 and "exited on the thread that entered it" in str(errors[0].value)
    assert sys.gettrace() is None or sys.gettrace() is not cap.recorder._installed
    assert [n.op for n in cap.graph.nodes] == ["mul"] and y.sum() == 9
