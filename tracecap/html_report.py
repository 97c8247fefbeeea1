"""The per-layer divergence report as one self-contained HTML page (``--html report.html``).

The page holds a summary (model, runtimes, ok or the first diverging layer per runtime with its
file:line, tolerance), the per-layer table (beyond-tolerance rows highlighted, the first one marked;
filter and sort with a few lines of inline JS) and the net's picture (``tracecap.picture``) coloured
from the same diffs. Nothing is fetched: no scripts, styles, fonts or images from anywhere else, so
the file can be mailed or archived as it is.
"""
from __future__ import annotations

from html import escape

from tracecap import picture

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;color:#1d2733}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.muted{color:#667} code{font:12px ui-monospace,Menlo,Consolas,monospace}
table{border-collapse:collapse} td,th{padding:3px 8px;border-bottom:1px solid #e3e7ec;text-align:left}
th{background:#f4f6f8;position:sticky;top:0;cursor:pointer;user-select:none;white-space:nowrap;vertical-align:bottom}
th.rt{text-align:right;font-weight:500} th.rt:first-line{font-weight:700} .wide{overflow-x:auto}
#layers{font-size:13px} #layers td{padding:2px 7px}
.alert{padding:8px 12px;border-radius:6px;margin:10px 0;border:1px solid} .alert.bad{background:#ffd9d9;border-color:#e8a1a1}
.alert.good{background:#dff3e0;border-color:#9fd1a6}
td.num{text-align:right;font-variant-numeric:tabular-nums;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
tr.bad td{background:#fff1e0} tr.first td{background:#ffd9d9;font-weight:600}
tr.nc td{color:#8a94a0} tr.flash td{outline:2px solid #1c7ed6}
.badge{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;font-weight:600;color:#fff;background:#c92a2a}
.ok{color:#2b8a3e;font-weight:600} .fail{color:#c92a2a;font-weight:600}
.summary td:first-child{color:#556;white-space:nowrap}
.legend span{display:inline-block;margin-right:14px} .legend i{display:inline-block;width:14px;height:12px;
  border:1px solid #888;border-radius:3px;vertical-align:-2px;margin-right:4px}
.controls{margin:6px 0 10px} .controls input[type=search]{width:260px;padding:3px 6px}
.graph{border:1px solid #d5dbe1;border-radius:6px;max-height:900px;overflow:auto;background:#fff}
.graph svg .layer{cursor:pointer}
"""

JS = """
(function () {
  var table = document.getElementById('layers');
  if (!table) return;
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  var filter = document.getElementById('filter'), onlyBad = document.getElementById('only-bad');
  var shown = document.getElementById('shown');
  function apply() {
    var text = filter.value.toLowerCase(), n = 0;
    rows.forEach(function (r) {
      var keep = (!text || r.textContent.toLowerCase().indexOf(text) >= 0) &&
                 (!onlyBad.checked || r.classList.contains('bad'));
      r.style.display = keep ? '' : 'none';
      if (keep) n++;
    });
    shown.textContent = n + ' of ' + rows.length + ' layers shown';
  }
  filter.addEventListener('input', apply);
  onlyBad.addEventListener('change', apply);
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    var up = true;
    th.addEventListener('click', function () {
      var sorted = rows.slice().sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
        if (x !== null && y !== null) return (parseFloat(x) - parseFloat(y)) * (up ? 1 : -1);
        return a.cells[col].textContent.localeCompare(b.cells[col].textContent) * (up ? 1 : -1);
      });
      up = !up;
      sorted.forEach(function (r) { body.appendChild(r); });
    });
  });
  var byName = {};
  rows.forEach(function (r) { byName[r.getAttribute('data-layer')] = r; });
  Array.prototype.forEach.call(document.querySelectorAll('.graph svg .layer'), function (g) {
    var t = g.querySelector('title'), row = t && byName[t.textContent];
    if (!row) return;
    g.addEventListener('click', function () {
      row.scrollIntoView({block: 'center'});
      row.classList.add('flash');
      setTimeout(function () { row.classList.remove('flash'); }, 1500);
    });
  });
  var graph = document.querySelector('.graph'), first = graph && graph.querySelector('svg .st-first');
  if (first) {  // open the picture at the first diverging layer
    var box = first.getBoundingClientRect(), frame = graph.getBoundingClientRect();
    graph.scrollTop += box.top - frame.top - frame.height / 3;
    graph.scrollLeft += box.left - frame.left - frame.width / 3;
  }
  apply();
  document.body.setAttribute('data-js', 'ready');
})();
"""


def layer_status(report):
    """Layer name -> picture status: "first" (where a runtime first diverges), "diverged" (beyond
    tolerance on some runtime), "ok", or "not-compared" (no PyTorch activation stands for its top)."""
    firsts = {rt["first_divergence"] for rt in report.get("runtimes", {}).values() if rt.get("first_divergence")}
    status = {}
    for row in report.get("layers", []):
        name = row["layer"]
        if name in firsts:
            status[name] = "first"
        elif not row.get("compared"):
            status[name] = "not-compared"
        elif any(not d.get("ok", True) for d in (row.get("diffs") or {}).values()):
            status[name] = "diverged"
        else:
            status[name] = "ok"
    return status


def _num(value, fmt):
    if value is None:
        return '<td class="num">&ndash;</td>'
    return f'<td class="num" data-v="{float(value)!r}">{format(value, fmt)}</td>'


def _text(value):
    return escape("" if value is None else str(value))


def _shape(shape):
    return "x".join(map(str, shape)) if shape else ""


def _verdict(res, rows_by_layer):
    """'ok', or the first diverging layer (linked to its row) with its type, op, module and file:line."""
    first = res.get("first_divergence")
    if res.get("ok") and not first:
        return '<span class="ok">ok</span> &mdash; every compared layer within tolerance'
    if not first:
        return '<span class="fail">outputs differ</span>'
    index, layer = rows_by_layer.get(first, (None, {}))
    where, module = layer.get("where"), layer.get("module")
    place = "".join([f" in <code>{_text(module)}</code>" if module else "",
                     f" at <code>{_text(where)}</code>" if where else ""])
    link = f'<a href="#row-{index}">{_text(first)}</a>' if index is not None else _text(first)
    op = f", {_text(layer.get('op'))}" if layer.get("op") else ""
    return f'<span class="fail">first divergence</span>: {link} ({_text(layer.get("type"))}{op}){place}'


def _summary(report, rows_by_layer):
    runtimes = report.get("runtimes") or {}
    bad = [rt for rt, res in runtimes.items() if res.get("first_divergence") or not res.get("ok")]
    if bad:
        out = [f'<div class="alert bad"><b>{_text(rt)}</b>: {_verdict(runtimes[rt], rows_by_layer)}</div>'
               for rt in bad]
    else:
        out = [f'<div class="alert good">Every compared layer is within tolerance on '
               f'{_text(", ".join(runtimes) or "no runtime")}.</div>']
    items = [("model", _text(report.get("model") or "")),
             ("prototxt", f"<code>{_text(report.get('prototxt'))}</code>"),
             ("caffemodel", f"<code>{_text(report.get('caffemodel'))}</code>"),
             ("inputs", ", ".join(f"<code>{_text(b)}</code> {_text(_shape(s))}"
                                  for b, s in (report.get("inputs") or {}).items())),
             ("outputs", ", ".join(f"<code>{_text(b)}</code>" for b in report.get("outputs") or [])),
             ("tolerance", f"{_text(report.get('tolerance'))} (relative: max abs diff against tolerance "
                           f"&times; max(1, max|reference|))")]
    out += ['<table class="summary">'] + [f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in items] + ["</table>"]
    out.append('<h2>Runtimes</h2><table class="runtimes"><thead><tr><th>runtime</th><th>verdict</th>'
               '<th>max abs diff (outputs)</th></tr></thead><tbody>')
    for rt, res in runtimes.items():
        out.append(f"<tr><td>{_text(rt)}</td><td>{_verdict(res, rows_by_layer)}</td>"
                   f"{_num(res.get('max_abs_diff'), '.3g')}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _table(report, status):
    runtimes = list(report.get("runtimes") or {})
    head = ["#", "layer", "type", "PyTorch op", "module", "file:line", "shape"]
    for rt in runtimes:
        head += [(rt, "max abs"), (rt, "rel"), (rt, "cosine")]
    out = ['<div class="controls"><input type="search" id="filter" placeholder="filter: layer, type, module, '
           'file..."> <label><input type="checkbox" id="only-bad"> only beyond tolerance</label> '
           '<span id="shown" class="muted"></span></div>',
           '<div class="wide"><table id="layers"><thead><tr>'
           + "".join(f"<th>{escape(h)}</th>" if isinstance(h, str) else f'<th class="rt">{escape(h[0])}<br>{h[1]}</th>'
                     for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(report.get("layers") or []):
        st = status.get(row["layer"])
        cls = {"first": "bad first", "diverged": "bad", "not-compared": "nc"}.get(st, "")
        badge = ' <span class="badge">first divergence</span>' if st == "first" else ""
        cells = [f'<td class="num" data-v="{i}">{i}</td>', f"<td><code>{_text(row['layer'])}</code>{badge}</td>",
                 f"<td>{_text(row.get('type'))}</td>", f"<td>{_text(row.get('op'))}</td>",
                 f"<td>{_text(row.get('module'))}</td>", f"<td><code>{_text(row.get('where'))}</code></td>",
                 f"<td>{_text(_shape(row.get('shape')))}</td>"]
        for rt in runtimes:
            d = (row.get("diffs") or {}).get(rt) or {}
            cells += [_num(d.get("max_abs"), ".3g"), _num(d.get("rel"), ".3g"), _num(d.get("cosine"), ".6f")]
        out.append(f'<tr id="row-{i}" class="{cls}" data-layer="{_text(row["layer"])}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _graph(report, prototxt_path, status, engine):
    """The inline picture; a note instead when the prototxt cannot be drawn (the table still stands)."""
    scopes = {row["layer"]: row.get("module") for row in report.get("layers") or [] if row.get("module")}
    try:
        boxes = picture.apply_scopes(picture.read_prototxt(prototxt_path), scopes)
        svg, used = picture.render_svg(boxes, status, engine=engine, title=report.get("model") or prototxt_path)
    except picture.PictureError as exc:
        return f'<p class="fail">The graph could not be drawn: {escape(str(exc))}</p>'
    legend = "".join(f'<span><i style="background:{picture.STYLE[s][0]};border-color:{picture.STYLE[s][1]}"></i>'
                     f"{escape(s)}</span>" for s in picture.STATUSES)
    return (f'<p class="legend">{legend}<span class="muted">(drawn with {escape(used)}; click a layer to find '
            f'its row)</span></p><div class="graph">{picture.inline_svg(svg)}</div>')


def render_html(report, prototxt_path=None, engine="auto"):
    """The page as text."""
    prototxt_path = prototxt_path or report.get("prototxt")
    status = layer_status(report)
    rows_by_layer = {row["layer"]: (i, row) for i, row in enumerate(report.get("layers") or [])}
    title = f"tracecap per-layer report: {report.get('model') or prototxt_path}"
    n_bad = sum(1 for s in status.values() if s in ("first", "diverged"))
    n_cmp = sum(1 for s in status.values() if s != "not-compared")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{len(status)} layers, {n_cmp} compared with PyTorch, {n_bad} beyond tolerance.</p>',
        _summary(report, rows_by_layer),
        "<h2>Per layer</h2>", _table(report, status),
        "<h2>Graph</h2>", _graph(report, prototxt_path, status, engine),
        f"<script>{JS}</script>", "</body></html>", ""])


def write_html(report: dict, prototxt_path: str, out_path: str, engine: str = "auto") -> str:
    """Write the page for ``report`` (the per-layer report dict) atomically; return ``out_path``."""
    return picture.write_text(render_html(report, prototxt_path, engine), out_path)
