"""The graph IR keeps its own edges, names linearly, lints what mappers rely on, and carries
quantization; passes run as a linted pipeline; Caffe layers remember the node they came from."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tracecap
from tracecap import passes, replay
from tracecap.graph import Graph, Namespace, Quantization
from tracecap.mappers import caffe


def _capture(fn, *inputs, clean=True):
    with torch.no_grad(), tracecap.capture() as cap:
        fn(*inputs)
    return cap.build(clean=clean)


# ---- users are an insertion-ordered set ----------------------------------------------------------
def test_a_node_reading_a_blob_twice_is_one_user():
    def fn(x):
        a = x.clone()
        return (a + x).sigmoid(), (x * x).tanh()
    g = _capture(fn, torch.randn(2, 3))
    add = next(n for n in g.nodes if n.op == "add")
    mul = next(n for n in g.nodes if n.op == "mul")
    x = g.inputs[0]
    assert add.bottoms == [x] and mul.bottoms == [x]            # the clone is gone: a + x reads x twice
    assert list(x.users) == [add, mul]                          # once each, in execution order
    assert g.lint()


def test_fold_batchnorm_counts_users_once():
    """A conv whose output BN alone reads folds; one also read by another op does not."""
    conv, bn = nn.Conv2d(3, 4, 3).eval(), nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 8, 8)
    alone = _capture(lambda t: bn(conv(t)), x)
    assert passes.fold_batchnorm(alone) and [n.op for n in alone.nodes] == ["conv2d"]
    torch.testing.assert_close(replay.run(alone, x)[0], bn(conv(x)), atol=1e-5, rtol=0)

    def shared(t):
        y = conv(t)
        return bn(y) + y * y   # y is read by batch_norm and (twice) by mul
    g = _capture(shared, x)
    y = next(n for n in g.nodes if n.op == "conv2d").tops[0]
    assert len(y.users) == 2
    assert not passes.fold_batchnorm(g)


# ---- edges derive from params ---------------------------------------------------------------------
def _small_graph():
    return _capture(lambda x, y: torch.sigmoid(x) + y, torch.randn(2, 3), torch.randn(2, 3))


def test_replace_input_swaps_params_args_kwargs_and_users():
    g = _small_graph()
    sig, add = g.nodes
    x, y = g.inputs
    add.replace_input(sig.tops[0], x)
    assert add.bottoms == [x, y] and add.params["input"] is x and add.args[0] is x
    assert add in x.users and add not in sig.tops[0].users
    g.outputs = list(add.tops)
    passes.eliminate_dead_code(g)
    assert [n.op for n in g.nodes] == ["add"] and g.lint()
    torch.testing.assert_close(replay.run(g, torch.ones(2, 3), torch.ones(2, 3))[0], torch.full((2, 3), 2.0))


def test_set_param_adds_and_removes_edges():
    g = _small_graph()
    sig, add = g.nodes
    x, y = g.inputs
    add.set_param("other", 2.0)
    assert add.bottoms == [sig.tops[0]] and add not in y.users
    add.set_param("other", x)
    assert add.bottoms == [sig.tops[0], x] and add in x.users


def test_erase_node_drops_it_from_its_bottoms_users():
    g = _small_graph()
    sig, add = g.nodes
    g.outputs = [sig.tops[0]]
    g.erase_node(add)
    assert not g.inputs[1].users and sig.tops[0].users == {}
    assert g.lint()


# ---- lint ------------------------------------------------------------------------------------------
def test_lint_catches_params_edited_by_hand():
    g = _small_graph()
    add = g.nodes[1]
    add.params["other"] = g.inputs[0]          # bypasses the edge API
    with pytest.raises(ValueError, match="bottoms .* are not the Blobs in its params.*set_param"):
        g.lint()


def test_lint_catches_misnamed_blobs_and_duplicate_node_names():
    g = _small_graph()
    blob = g.inputs[0]
    blob.name = "renamed"
    with pytest.raises(ValueError, match=r"graph.blobs\['x'\] is blob 'renamed'"):
        g.lint()
    blob.name = "x"
    g.nodes[1].name = g.nodes[0].name
    with pytest.raises(ValueError, match="node names are not unique"):
        g.lint()


def test_lint_catches_users_out_of_sync():
    g = _small_graph()
    sig, add = g.nodes
    sig.tops[0].users.pop(add)
    with pytest.raises(ValueError, match="users misses"):
        g.lint()
    sig.tops[0].users[add] = None
    g.inputs[1].users[sig] = None               # sig does not read y
    with pytest.raises(ValueError, match="y.users holds sigmoid, which does not read it"):
        g.lint()


# ---- names --------------------------------------------------------------------------------------------
def test_namespace_gives_the_first_free_suffix_per_base():
    ns = Namespace()
    assert [ns("conv") for _ in range(3)] == ["conv", "conv_1", "conv_2"]
    assert ns("relu_1") == "relu_1"
    assert [ns("relu"), ns("relu"), ns("relu")] == ["relu", "relu_2", "relu_3"]   # relu_1 was taken as a base
    assert ns("a b!") == "a_b_" and ns("") == "v"
    assert ns("conv", "node") == "conv"                                           # spaces are apart


def test_names_are_the_same_after_assign_names_runs_again():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1), nn.ReLU()).eval()
    g = _capture(model, torch.randn(1, 3, 8, 8))
    before = [(n.name, [t.name for t in n.tops]) for n in g.nodes]
    g.assign_names()
    assert [(n.name, [t.name for t in n.tops]) for n in g.nodes] == before
    assert before[1] == ("1", ["0@1"])   # in place: a version of the conv's blob
    assert g.lint()


def test_graph_build_of_a_long_chain_names_every_node():
    def chain(x):
        for _ in range(3000):
            x = x + 1
        return x
    g = _capture(chain, torch.zeros(1))
    names = [n.name for n in g.nodes]
    assert len(names) == 3000 and len(set(names)) == 3000 and names[:3] == ["add", "add_1", "add_2"]
    assert names[-1] == "add_2999"


# ---- passes ----------------------------------------------------------------------------------------------
def test_run_passes_reports_and_lints_after_each():
    g = _capture(lambda x: x.clone().sigmoid(), torch.randn(2), clean=False)
    report = passes.run_passes(g, [passes.drop_identities, passes.eliminate_dead_code])
    assert report == {"drop_identities": True, "eliminate_dead_code": False}

    def breaks_edges(graph):
        graph.nodes[0].params["input"] = 1.0
        return True
    with pytest.raises(ValueError, match="after pass breaks_edges: .*params"):
        passes.run_passes(g, [breaks_edges])


def test_zero_pad_folds_into_convolutions_as_a_pass():
    conv = nn.Conv2d(3, 4, 3, padding=1).eval()
    same = nn.Conv2d(3, 4, 3, padding="same").eval()
    x = torch.randn(1, 3, 9, 7)

    def fn(t):
        p = F.pad(t, (2, 2, 1, 1))
        return conv(p) + same(p)
    raw = _capture(fn, x, clean=False)
    g = _capture(fn, x)
    assert "pad" in [n.op for n in raw.nodes] and "pad" not in [n.op for n in g.nodes]
    convs = [n for n in g.nodes if n.op == "conv2d"]
    assert [n.params["padding"] for n in convs] == [(2, 3), (2, 3)]
    assert all(n.params["input"] is g.inputs[0] and n.target is None for n in convs)
    with torch.no_grad():
        torch.testing.assert_close(replay.run(g, x)[0], fn(x), atol=1e-5, rtol=0)


def test_pad_read_by_something_else_is_not_folded():
    conv = nn.Conv2d(3, 4, 3).eval()

    def fn(t):
        p = F.pad(t, (1, 1, 1, 1))
        return conv(p) + p[:, :1, 1:-1, 1:-1]
    g = _capture(fn, torch.randn(1, 3, 6, 6))
    pad = next(n for n in g.nodes if n.op == "pad")
    conv_node = next(n for n in g.nodes if n.op == "conv2d")
    assert conv_node.params["input"] is pad.tops[0] and conv_node.params["padding"] == (0, 0)


# ---- quantization ---------------------------------------------------------------------------------------------
def test_quantized_blobs_carry_scale_zero_point_and_dtype():
    def fn(x):
        q = torch.quantize_per_tensor(x, 0.05, 7, torch.quint8)
        return q.dequantize() * 2
    g = _capture(fn, torch.randn(2, 3))
    qnode = next(n for n in g.nodes if n.op == "quantize_per_tensor")
    quant = qnode.tops[0].quant
    assert quant == Quantization("per_tensor_affine", torch.quint8, 0.05, 7)
    assert g.inputs[0].quant is None
    assert g.to_dict()["nodes"][0]["name"] == qnode.name
    w = torch.quantize_per_channel(torch.randn(3, 2), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 2]), 0,
                                   torch.qint8)
    per_channel = Quantization.of(w)
    assert per_channel.scheme == "per_channel_affine" and per_channel.axis == 0
    assert per_channel.zero_point == (0, 1, 2) and per_channel.dtype == torch.qint8
    with pytest.raises(ValueError, match="axis"):
        Quantization("per_channel_affine", torch.qint8, (0.1,), (0,))


# ---- layers remember their node ---------------------------------------------------------------------------------
def test_every_layer_knows_its_node_and_graph_blobs_are_caffe_tops():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Hardtanh(-1, 2), nn.Flatten()).eval()
    g = _capture(model, torch.randn(1, 3, 6, 6))
    layers = caffe.to_layers(g, "opencv")
    assert all(layer.origin in g.nodes for layer in layers)
    by_node = {}
    for layer in layers:
        by_node.setdefault(layer.origin, []).append(layer)
    assert set(by_node) == set(g.nodes)
    for node, made in by_node.items():
        final = {name: blob for layer in made for name, blob in caffe.graph_blobs_of(layer).items()}
        assert set(final.values()) == set(node.tops)          # each graph blob has its Caffe top ...
        assert all(caffe.caffe_name(b) == name for name, b in final.items())
    hardtanh = next(n for n in g.nodes if n.op == "hardtanh")
    assert len(by_node[hardtanh]) == 3                         # ... and decompositions have intermediates
    assert [caffe.graph_blobs_of(layer) for layer in by_node[hardtanh]][:2] == [{}, {}]


def test_an_empty_graph_namespace_is_per_graph():
    assert Graph().unique_name("x") == "x" and Graph().unique_name("x") == "x"
