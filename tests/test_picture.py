"""tracecap.picture and `tracecap graph`: the SVG parses, has one box per layer, module scopes as
nested clusters and the diverging layer coloured - drawn by graphviz dot (when installed) and by the
pure-Python layout."""
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tracecap import picture

# A hand-written net in tracecap's naming: decompositions (``bn1/bn``), in-place versions (``@1``),
# two blocks of ``layer1``, and a foreign layer whose name needs escaping everywhere.
ODD = "odd<&>\"'name"
TINY = r'''
name: "tiny"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "x" top: "conv1" }
layer { name: "bn1/bn" type: "BatchNorm" bottom: "conv1" top: "bn1/bn" }
layer { name: "bn1" type: "Scale" bottom: "bn1/bn" top: "bn1" }
layer { name: "bn1@1" type: "ReLU" bottom: "bn1" top: "bn1@1" }
layer { name: "layer1.0.conv1" type: "Convolution" bottom: "bn1@1" top: "layer1.0.conv1" }
layer { name: "layer1.0.bn1/bn" type: "BatchNorm" bottom: "layer1.0.conv1" top: "layer1.0.bn1/bn" }
layer { name: "layer1.0.bn1" type: "Scale" bottom: "layer1.0.bn1/bn" top: "layer1.0.bn1" }
layer { name: "layer1.0.bn1@1" type: "Eltwise" bottom: "layer1.0.bn1" bottom: "bn1@1" top: "layer1.0.bn1@1" }
layer { name: "layer1.1.conv1" type: "Convolution" bottom: "layer1.0.bn1@1" top: "layer1.1.conv1" }
layer { name: "layer1.1.conv1@1" type: "ReLU" bottom: "layer1.1.conv1" top: "layer1.1.conv1@1" }
layer { name: "fc" type: "InnerProduct" bottom: "layer1.1.conv1@1" top: "fc" }
layer { name: "odd<&>\"'name" type: "ReLU" bottom: "fc" top: "fc" }
'''
NAMES = ["x", "conv1", "bn1/bn", "bn1", "bn1@1", "layer1.0.conv1", "layer1.0.bn1/bn", "layer1.0.bn1",
         "layer1.0.bn1@1", "layer1.1.conv1", "layer1.1.conv1@1", "fc", ODD]
CLUSTERS = {"bn1", "layer1", "layer1.0", "layer1.0.bn1", "layer1.1"}

ENGINES = ["python", pytest.param("dot", marks=pytest.mark.skipif(
    shutil.which("dot") is None, reason="graphviz dot is not installed (apt-get install graphviz)"))]

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY)
    return str(path)


def _classes(el):
    return (el.get("class") or "").split()


def boxes_and_clusters(svg):
    """({layer name: its <g>}, {cluster label: its <g>}) of an SVG from either engine."""
    root = ET.fromstring(svg.encode("utf-8"))
    layers, scopes = {}, {}
    for g in root.iter(SVG + "g"):
        if "layer" in _classes(g):
            name = g.find(SVG + "title").text
            assert name not in layers
            layers[name] = g
        elif "scope" in _classes(g):
            scopes[g.find(SVG + "text").text] = g
    return layers, scopes


def _fills(g):
    return {el.get("fill") for el in g.iter() if el.get("fill")}


def test_names_give_scopes():
    assert picture.scope_from_name("layer1.0.bn1/bn") == "layer1.0.bn1"
    assert picture.scope_from_name("layer1.0.bn2@1") == "layer1.0"
    assert picture.scope_from_name("bn1@1") == ""
    assert picture.scope_from_name("layer1.0.conv1") == "layer1.0.conv1"
    assert picture.scope_from_name("inception_3a/1x1") == "inception_3a"
    assert picture.scope_from_name("conv1") == "conv1"


def test_clusters_nest_and_drop_single_layer_scopes(tiny):
    boxes = picture.read_prototxt(tiny)
    assert [b.name for b in boxes] == NAMES
    paths, labels = picture.clusters_of(boxes)
    assert set(labels.values()) == CLUSTERS  # conv1, layer1.0.conv1, fc ...: one layer each, no cluster
    by_name = {b.name: [labels[c] for c in p] for b, p in zip(boxes, paths)}
    assert by_name["layer1.0.bn1/bn"] == ["layer1", "layer1.0", "layer1.0.bn1"]
    assert by_name["layer1.0.conv1"] == ["layer1", "layer1.0"]
    assert by_name["layer1.1.conv1@1"] == ["layer1", "layer1.1"]
    assert by_name["conv1"] == [] and by_name["bn1"] == ["bn1"]


def test_a_caffemodel_reads_like_its_prototxt(tiny, tmp_path):
    from google.protobuf import text_format
    from tracecap.mappers.caffe.proto import module_for
    net = text_format.Parse(TINY, module_for("opencv").NetParameter())
    (tmp_path / "tiny.caffemodel").write_bytes(net.SerializeToString())
    assert picture.read_prototxt(str(tmp_path / "tiny.caffemodel")) == picture.read_prototxt(tiny)


def test_in_place_layers_chain_their_edges(tiny):
    boxes = picture.read_prototxt(tiny)
    edges = {(boxes[u].name, boxes[v].name, blob) for u, v, blob in picture.edges_of(boxes)}
    assert ("bn1@1", "layer1.0.bn1@1", "bn1@1") in edges            # the skip connection
    assert ("fc", ODD, "fc") in edges                               # in-place ReLU reads fc's producer
    assert len(edges) == len(NAMES) - 1 + 1                         # a chain plus one skip


@pytest.mark.parametrize("engine", ENGINES)
def test_svg_has_a_box_per_layer_clusters_and_colours(tiny, engine):
    status = {n: "ok" for n in NAMES}
    status.update({"layer1.0.bn1": "first", "layer1.0.bn1@1": "diverged", "x": "not-compared"})
    svg, used = picture.render_svg(picture.read_prototxt(tiny), status, engine=engine, title="tiny <net>")
    assert used == engine
    layers, scopes = boxes_and_clusters(svg)    # parses as XML, names escaped
    assert sorted(layers) == sorted(NAMES)
    assert set(scopes) == CLUSTERS
    for name, st in (("layer1.0.bn1", "first"), ("layer1.0.bn1@1", "diverged"), ("conv1", "ok"),
                     ("x", "not-compared")):
        assert f"st-{st}" in _classes(layers[name])
        assert picture.STYLE[st][0] in _fills(layers[name])
    assert picture.STYLE["first"][0] not in _fills(layers["conv1"])
    root = ET.fromstring(svg.encode())
    assert sum("edge" in _classes(g) for g in root.iter(SVG + "g")) == len(NAMES)


def test_python_layout_is_deterministic_and_boxes_sit_inside_their_clusters(tiny):
    boxes = picture.read_prototxt(tiny)
    svg, _ = picture.render_svg(boxes, engine="python")
    assert svg == picture.render_svg(picture.read_prototxt(tiny), engine="python")[0]
    _check_geometry(svg, boxes)


def _rect(g):
    r = g.find(SVG + "rect")
    x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
    return x, y, x + w, y + h


def _check_geometry(svg, boxes):
    """No two boxes overlap, every box lies inside each cluster of its scope and outside every other
    cluster (python layout)."""
    layers, scopes = boxes_and_clusters(svg)
    rects = {name: _rect(g) for name, g in layers.items()}
    order = sorted(rects.values(), key=lambda r: (r[1], r[0]))
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            if b[1] >= a[3]:
                break
            assert a[2] <= b[0] or b[2] <= a[0], (a, b)
    paths, labels = picture.clusters_of(boxes)
    for box, path in zip(boxes, paths):
        x0, y0, x1, y1 = rects[box.name]
        for cid in path:
            c = _rect(scopes[labels[cid]])
            assert c[0] < x0 and c[1] < y0 and x1 < c[2] and y1 < c[3], (box.name, labels[cid])
        for cid in set(labels) - set(path):
            c = _rect(scopes[labels[cid]])
            assert x1 <= c[0] or c[2] <= x0 or y1 <= c[1] or c[3] <= y0, (box.name, labels[cid])


def test_captured_resnet18_scopes_come_from_the_modules():
    boxes, name = picture.boxes_from_spec("resnet18")
    assert name == "resnet18"
    scopes = {b.name: b.scope for b in boxes}
    assert scopes["layer1.0.bn2@1"] == "layer1.0"           # the residual add runs in BasicBlock.forward
    assert scopes["bn1@1"] == "relu" and scopes["layer2.0.downsample.1/bn"] == "layer2.0.downsample.1"
    svg, _ = picture.render_svg(boxes, engine="python")
    _check_geometry(svg, boxes)


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz dot is not installed")
def test_dot_engine_requested_but_failing_is_a_clean_error(monkeypatch, tiny):
    monkeypatch.setattr(picture, "DOT_TIMEOUT", 1e-9)
    with pytest.raises(picture.PictureError, match="dot"):
        picture.render_svg(picture.read_prototxt(tiny), engine="dot")
    with pytest.warns(UserWarning, match="pure-Python"):
        _, used = picture.render_svg(picture.read_prototxt(tiny), engine="auto")
    assert used == "python"


def test_dot_engine_absent(monkeypatch, tiny):
    monkeypatch.setattr(picture.shutil, "which", lambda name: None)
    with pytest.raises(picture.PictureError, match="not installed"):
        picture.render_svg(picture.read_prototxt(tiny), engine="dot")
    assert picture.render_svg(picture.read_prototxt(tiny))[1] == "python"


def test_unknown_status_is_refused(tiny):
    with pytest.raises(picture.PictureError, match="status 'bad'"):
        picture.render_svg(picture.read_prototxt(tiny), {"fc": "bad"}, engine="python")


def test_inline_svg_has_no_prolog_or_namespaces(tiny):
    svg, _ = picture.render_svg(picture.read_prototxt(tiny), engine="python")
    inline = picture.inline_svg(svg)
    assert inline.startswith("<svg") and "http" not in inline


# ---- the command, through the installed entry point -----------------------------------------

def _tracecap(*args, cwd=None):
    exe = shutil.which("tracecap")
    cmd = [exe] if exe else [sys.executable, "-m", "tracecap"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


def test_graph_command_draws_bundled_resnet18(tmp_path):
    out = tmp_path / "resnet18.svg"
    r = _tracecap("graph", "resnet18", "-o", str(out))
    assert r.returncode == 0, r.stderr
    layers, scopes = boxes_and_clusters(out.read_text())
    assert len(layers) == 90 and "x" in layers and "fc" in layers  # the Input + 89 layers
    assert {"layer1", "layer1.0", "layer2.0.downsample", "layer4.1"} <= set(scopes)
    assert f"{out} (90 layers, drawn with {'dot' if shutil.which('dot') else 'python'})" in r.stdout


def test_graph_command_reads_a_prototxt(tmp_path, tiny):
    out = tmp_path / "tiny.svg"
    r = _tracecap("graph", tiny, "-o", str(out), "--engine", "python")
    assert r.returncode == 0, r.stderr
    layers, scopes = boxes_and_clusters(out.read_text())
    assert sorted(layers) == sorted(NAMES) and set(scopes) == CLUSTERS


@pytest.mark.parametrize("args, message", [
    (["nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["missing.prototxt"], "missing.prototxt: no such file"),
    (["bad.prototxt"], "not a Caffe prototxt"),
    (["resnet18", "--input", "1x3"], "the model's forward failed on input 1x3"),
])
def test_graph_command_errors_exit_2_without_traceback(tmp_path, args, message):
    (tmp_path / "bad.prototxt").write_text("layer { name: \"a\" type: \n")
    r = _tracecap("graph", *args, "-o", str(tmp_path / "g.svg"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("tracecap: error: ") and message in r.stderr, r.stderr
    assert not (tmp_path / "g.svg").exists()


def test_readme_graph_commands_parse():
    """The README's `tracecap graph` lines are commands the CLI accepts (the bundled one runs above)."""
    import re
    from pathlib import Path
    from tracecap import cli
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = re.findall(r"^tracecap graph .*$", text, re.M)
    assert "tracecap graph resnet18 -o resnet18.svg" in lines and len(lines) == 2
    for line in lines:
        args = cli.build_parser().parse_args(line.replace("[--engine auto|dot|python]", "--engine python").split()[1:])
        assert args.command == "graph" and args.output == "resnet18.svg"
