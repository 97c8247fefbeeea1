"""tracecap.html_report: one self-contained page (summary, per-layer table, coloured graph), checked as
text and, where Debian's chromium is installed, rendered headless: a screenshot (saved under
$TRACECAP_ARTIFACTS) that is not blank and shows the marked row, and a DOM in which the page's JS ran."""
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from html import escape
from html.parser import HTMLParser

import numpy as np
import pytest

from tracecap import html_report, picture
import test_picture
from test_picture import CLUSTERS, NAMES, ODD

FIRST = "layer1.0.bn1"
CHROMIUM = shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium") or None


def make_report(prototxt, first=FIRST, model="tiny"):
    """A report dict of the per-layer schema, by hand: opencv diverges from ``first`` on, caffe agrees;
    the parts of a decomposition (``.../bn``) and the input are not compared."""
    boxes = picture.read_prototxt(prototxt)
    rows, diverged = [], False
    for k, box in enumerate(boxes):
        compared = "/" not in box.name and box.type != "Input"
        diverged = diverged or box.name == first
        bad = diverged and compared
        diffs = {"opencv": {"max_abs": 0.5 + k if bad else 1e-6 * k, "rel": 0.1 if bad else 1e-7,
                            "cosine": 0.93 if bad else 1.0, "ok": not bad},
                 "caffe": {"max_abs": 2e-6, "rel": 1e-7, "cosine": 1.0, "ok": True}} if compared else {}
        rows.append({"layer": box.name, "type": box.type, "top": box.tops[0] if box.tops else box.name,
                     "op": None if box.type == "Input" else box.type.lower(), "module": box.scope or None,
                     "where": None if box.type == "Input" else f"net.py:{10 + k}", "shape": [1, 4, 8, 8],
                     "compared": compared, "diffs": diffs})
    return {"prototxt": prototxt, "caffemodel": prototxt.replace(".prototxt", ".caffemodel"), "model": model,
            "tolerance": 1e-4, "inputs": {"x": [1, 3, 8, 8]}, "outputs": [boxes[-1].tops[0]],
            "runtimes": {"opencv": {"ok": False, "first_divergence": first, "max_abs_diff": 12.5},
                         "caffe": {"ok": True, "first_divergence": None, "max_abs_diff": 2e-6}},
            "layers": rows}


tiny = test_picture.tiny  # the hand-written net, as a fixture


class _Rows(HTMLParser):
    """The <tr> attributes of the per-layer table, and every tag's attributes."""

    def __init__(self):
        super().__init__()
        self.rows, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "tr" and (attrs.get("id") or "").startswith("row-"):
            self.rows.append(attrs)


def _inline_svg(page):
    return ET.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))


@pytest.mark.parametrize("engine", test_picture.ENGINES)
def test_page_is_self_contained_and_holds_summary_table_and_graph(tiny, tmp_path, engine):
    report = make_report(tiny)
    out = tmp_path / "report.html"
    assert html_report.write_html(report, tiny, str(out), engine=engine) == str(out)
    assert f"drawn with {engine};" in out.read_text()
    page = out.read_text(encoding="utf-8")
    for external in ("http://", "https://", "src=", "@import", "url(http"):
        assert external not in page
    parsed = _Rows()
    parsed.feed(page)
    assert not [t for t, a in parsed.tags if t in ("link", "img", "iframe") or (t == "script" and "src" in a)]
    assert [r["data-layer"] for r in parsed.rows] == NAMES
    classes = {r["data-layer"]: r["class"].split() for r in parsed.rows}
    assert classes[FIRST] == ["bad", "first"]
    assert [n for n in NAMES if "bad" in classes[n]] == NAMES[NAMES.index(FIRST):NAMES.index(FIRST) + 1] + [
        n for n in NAMES[NAMES.index(FIRST) + 1:] if "/" not in n]
    assert classes["layer1.0.bn1/bn"] == ["nc"] and classes["conv1"] == []
    # the summary: first divergence of opencv with its module and file:line; caffe ok; the tolerance
    assert re.search(rf'first divergence</span>: <a href="#row-{NAMES.index(FIRST)}">{FIRST}</a> \(Scale, scale\) '
                     rf"in <code>layer1.0.bn1</code> at <code>net.py:{10 + NAMES.index(FIRST)}</code>", page)
    assert '<td>caffe</td><td><span class="ok">ok</span>' in page and "<td>tolerance</td><td>0.0001" in page
    assert escape(ODD) in page and ODD not in page
    # the graph, inline and coloured from the diffs
    svg = _inline_svg(page)
    boxes = {g.find("title").text: g.get("class").split() for g in svg.iter("g") if "layer" in g.get("class", "")}
    assert sorted(boxes) == sorted(NAMES)
    assert "st-first" in boxes[FIRST] and "st-diverged" in boxes["fc"] and "st-ok" in boxes["conv1"]
    assert "st-not-compared" in boxes["x"]
    scopes = {g.find("text").text for g in svg.iter("g") if "scope" in g.get("class", "")}
    assert scopes == CLUSTERS


def test_status_follows_the_report():
    report = {"runtimes": {"a": {"first_divergence": "c"}, "b": {"first_divergence": None}},
              "layers": [{"layer": "a", "compared": True, "diffs": {"a": {"ok": True}}},
                         {"layer": "b", "compared": False, "diffs": {}},
                         {"layer": "c", "compared": True, "diffs": {"a": {"ok": False}}},
                         {"layer": "d", "compared": True, "diffs": {"a": {"ok": True}, "b": {"ok": False}}}]}
    assert html_report.layer_status(report) == {"a": "ok", "b": "not-compared", "c": "first", "d": "diverged"}


def test_all_ok_report_and_undrawable_graph_still_make_a_page(tiny, tmp_path):
    report = make_report(tiny, first=None)
    report["runtimes"]["opencv"] = {"ok": True, "first_divergence": None, "max_abs_diff": 1e-6}
    page = html_report.render_html(report, str(tmp_path / "gone.prototxt"))
    assert page.count('<span class="ok">ok</span>') == 2 and "first divergence" not in page
    assert '<div class="alert good">Every compared layer is within tolerance on opencv, caffe.</div>' in page
    assert "The graph could not be drawn" in page and "gone.prototxt: no such file" in page
    assert page.count('<tr id="row-') == len(NAMES)


def test_write_is_atomic_and_leaves_nothing_behind(tiny, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    html_report.write_html(make_report(tiny), tiny, str(out))
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "tiny.prototxt"]
    with pytest.raises(picture.PictureError, match="cannot write"):
        html_report.write_html(make_report(tiny), tiny, str(tmp_path / "no" / "dir" / "r.html"))


# ---- headless Chromium --------------------------------------------------------------------------

def png_pixels(path):
    """The RGB(A) pixels of an 8-bit, non-interlaced PNG as an (h, w, channels) array: its own small
    decoder (zlib + the five scanline filters), so no imaging library is needed."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, head = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = head
    assert depth == 8 and colour in (2, 6) and interlace == 0, head
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, width * bpp + 1)
    out = np.zeros((height, width * bpp), np.int32)
    prev = np.zeros(width * bpp, np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 0:
            row = line
        elif kind == 1:      # Sub: a running sum per channel
            row = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:      # Up
            row = (line + prev) % 256
        else:                # Average, Paeth: each byte needs the one decoded before it
            row = np.zeros_like(line)
            for i in range(line.size):
                a = int(row[i - bpp]) if i >= bpp else 0
                b, c = int(prev[i]), int(prev[i - bpp]) if i >= bpp else 0
                if kind == 3:
                    row[i] = (line[i] + (a + b) // 2) % 256
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    row[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
        out[y], prev = row, row
    return out.reshape(height, width, bpp).astype(np.uint8)


def _chromium(*args, cwd):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={cwd / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=180, cwd=cwd)


@pytest.fixture(scope="module")
def resnet18_page(tmp_path_factory):
    """The page for a hand-made report over a real converted resnet18 prototxt (diverging from
    layer2.0.bn1 on opencv), in $TRACECAP_ARTIFACTS or a tmp dir."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    from tracecap.convert import convert
    work = tmp_path_factory.mktemp("resnet18")
    summary = convert("resnet18", [], str(work), dialect="opencv", quiet=True)
    artifacts = os.environ.get("TRACECAP_ARTIFACTS") or str(tmp_path_factory.mktemp("artifacts"))
    os.makedirs(artifacts, exist_ok=True)
    report = make_report(summary["prototxt"], first="layer2.0.bn1", model="resnet18")
    page = html_report.write_html(report, summary["prototxt"], os.path.join(artifacts, "report.html"))
    return page, artifacts, work


def test_chromium_renders_the_page(resnet18_page):
    page, artifacts, work = resnet18_page
    shot = os.path.join(artifacts, "report.png")
    if os.path.exists(shot):
        os.unlink(shot)
    r = _chromium(f"--screenshot={shot}", "--window-size=1400,1000", "file://" + page, cwd=work)
    assert os.path.exists(shot), r.stderr[-2000:]
    print(f"\nscreenshot: {shot}")
    assert os.path.getsize(shot) > 20_000
    pixels = png_pixels(shot)
    assert pixels.shape[:2] == (1000, 1400)
    rgb = pixels[..., :3].reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    assert len(colours) > 50                                 # text, table stripes, badges: not blank
    assert counts.max() / rgb.shape[0] < 0.95                # not one colour (plus specks)
    first_row = np.array([0xff, 0xd9, 0xd9])                 # the first-divergence banner: CSS applied
    assert (rgb == first_row).all(axis=1).sum() > 1000


def test_chromium_runs_the_pages_script_and_keeps_the_table(resnet18_page):
    page, artifacts, work = resnet18_page
    r = _chromium("--dump-dom", "file://" + page, cwd=work)
    dom = r.stdout
    assert '<body data-js="ready">' in dom, r.stderr[-2000:]
    assert dom.count('<tr id="row-') == 90 and "90 of 90 layers shown" in dom
    assert dom.count('class="node layer') == 90
    shot = os.path.join(artifacts, "report-full.png")      # the whole page, graph included, for people
    _chromium(f"--screenshot={shot}", "--window-size=1400,3400", "file://" + page, cwd=work)
    assert os.path.getsize(shot) > 20_000
