"""Where does a conversion diverge? Compare every Caffe top with the PyTorch activation it stands for.

The PyTorch side is the captured graph re-run by ``tracecap.replay`` (the same torch calls on the
same tensors, so every blob version has its exact value; its outputs are checked against the eager
forward first). The Caffe side is one run per real runtime that reads every comparable top at once.

What is compared, and what is not (never a false divergence):

* a layer's top is compared when it stands for a graph blob (``caffe.graph_blobs_of``): the
  intermediate tops of a decomposition (several layers for one op) are listed, not compared;
* a top written by several layers (in place) is read after its last writer, as both runtimes do,
  and compared there only;
* a top whose runtime shape is not the PyTorch shape up to size-1 axes (the same values in the same
  order) is listed as not compared: its layout differs.

OpenCV fuses layers (Convolution + BatchNorm + ReLU, Power + Power) unless the fused layer's output
is asked for, so reading every top runs a net that is not quite the deployed one. The deployed
outputs are therefore checked too (the run that reads only them); when they diverge but the run
that reads everything does not, a fusion is wrong, and the report bisects over which tops are read
to name the first layer whose value the fusion spoils.

The report is a JSON-ready dict (schema in ``build``); ``format_report`` prints it as a table.
"""
from __future__ import annotations

import linecache
import os


from tracecap.compare import MODEL_TOLERANCE, OP_TOLERANCE, stats, within_tolerance
from tracecap.errors import CaptureError, TracecapError


# Caffe computes every layer as written whatever is read (``runtimes.run``'s ``fusion`` changes nothing
# there), so one run that reads every top also gives its deployed outputs.
NEVER_FUSES = frozenset({"caffe"})


def every_top(prototxt):
    """The tops of all the prototxt's layers but its inputs: what a verify run reads to serve the report too."""
    from tracecap import runtimes
    return list(dict.fromkeys(t for layer in runtimes.summarize(prototxt).layers if layer["type"] != "Input"
                              for t in layer["top"]))


class Report(dict):
    """The report dict; ``source_paths`` also keeps each layer's full (file, line) for printing its source."""

    source_paths: dict


# ---------------------------------------------------------------------------------------- PyTorch side
def torch_values(graph, inputs, eager=None):
    """{blob name: float32 numpy array} of every activation and input, by replaying the graph on ``inputs``.

    ``eager``: the model's own outputs; a replay that does not reproduce them is a capture bug,
    reported as such rather than blamed on a layer."""
    import torch
    from tracecap import replay
    from tracecap.ops import reference
    # a node whose recorded call cleanup made invalid (``x.t().contiguous().view(...)`` with the
    # ``contiguous`` gone: ``view`` refuses) is computed from its op and params
    outs, env = replay.run(graph, *inputs, return_env=True, fallback=reference.call)
    if eager is not None:
        for blob, got, want in zip(graph.outputs, outs, eager):
            want = want.detach().float().numpy()
            got = got.detach().float().numpy()
            if got.shape != want.shape or not within_tolerance(got, want, OP_TOLERANCE)[1]:
                raise CaptureError(f"the captured graph does not reproduce the model's output {blob.name}; the "
                                   f"per-layer report would compare against the wrong values")
    activations = {b.name for b in graph.blobs.values() if not b.is_constant}
    values = {}
    for name, v in env.items():
        if name in activations and isinstance(v, torch.Tensor) and v.layout == torch.strided:
            v = v.dequantize() if v.is_quantized else v
            values[name] = v.detach().float().numpy()   # float32: no copy for the usual float tensors
    return values


# ---------------------------------------------------------------------------------------- the rows
def _short_where(source):
    if not source or source == "?":
        return None, None
    path, _, line = source.rpartition(":")
    if not line.isdigit():
        return source, None
    return f"{os.path.basename(path)}:{line}", (path, int(line))


def _same_layout(caffe_shape, torch_shape):
    """The same values in the same (C) order: equal shapes once size-1 axes are dropped."""
    return [d for d in caffe_shape if d != 1] == [d for d in torch_shape if d != 1]


def _rows(summary, mapped, values):
    """One row per prototxt layer; ``row["_tops"]`` = {caffe top: torch value} of the tops to compare."""
    last_writer = {}
    for i, layer in enumerate(summary.layers):
        for t in layer["top"]:
            last_writer[t] = i
    from tracecap.mappers.caffe import graph_blobs_of
    rows, paths = [], {}
    for i, layer in enumerate(summary.layers):
        ours = mapped.get(layer["name"])
        node = getattr(ours, "origin", None)
        row = {"layer": layer["name"], "type": layer["type"], "top": layer["top"][0] if layer["top"] else "",
               "op": None, "module": None, "where": None, "shape": [], "compared": False, "diffs": {}}
        tops = {}
        if node is not None and ours.type == layer["type"]:
            row["op"], row["module"] = node.op, node.scope or None
            row["where"], full = _short_where(node.source)
            if full is not None:
                paths[layer["name"]] = full
            blobs = graph_blobs_of(ours)
            for t in layer["top"]:
                blob = blobs.get(t)
                if blob is not None and last_writer[t] == i and blob.name in values:
                    tops[t] = values[blob.name]
            if tops:
                row["top"] = next(iter(tops))
                row["shape"] = list(tops[row["top"]].shape)
        row["_tops"] = tops
        rows.append(row)
    return rows, paths


def _check_same_net(summary, mapped, prototxt):
    """The prototxt must be the mapping of this graph: otherwise its tops mean other values."""
    theirs = [(l["name"], l["type"]) for l in summary.layers if l["type"] not in ("Input", "Silence")]
    ours = [(l.name, l.type) for l in mapped.values() if l.type != "Silence"]
    if theirs != ours:
        mine, yours = set(ours), set(theirs)
        extra = [f"{n} ({t})" for n, t in theirs if (n, t) not in mine]
        lacking = [f"{n} ({t})" for n, t in ours if (n, t) not in yours]
        parts = [f"it has {_some(extra)}, which the capture does not make" if extra else "",
                 f"it lacks {_some(lacking)}" if lacking else ""]
        detail = "; ".join(p for p in parts if p) or "its layers come in another order"
        raise TracecapError(f"{prototxt} is not the conversion of this model as captured: {detail}. Compare with "
                            f"the options it was converted with (--fold-bn, --legacy, --input shapes)")


def _some(items):
    return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")


# ---------------------------------------------------------------------------------------- runtime side
def _diff(value, ref, tolerance):
    """The figures of one top, or None when the runtime's array is laid out unlike the torch tensor."""
    if value.size != ref.size or not _same_layout(value.shape, ref.shape):
        return None
    s = stats(value.reshape(ref.shape), ref)
    return {"max_abs": s["max_abs_diff"], "rel": s["relative_diff"], "cosine": s["cosine"],
            "ok": bool(s["relative_diff"] <= tolerance)}


def _compare(rows, got, tolerance, layout_differs):
    """{layer name: worst diffs over its tops read in ``got``}; tops laid out otherwise go to ``layout_differs``."""
    out = {}
    for row in rows:
        worst = None
        for t, ref in row["_tops"].items():
            if t not in got:
                continue
            d = _diff(got[t], ref, tolerance)
            if d is None:
                layout_differs.add(row["layer"])
            elif worst is None:
                worst = d
            else:
                worst = {"max_abs": max(worst["max_abs"], d["max_abs"]), "rel": max(worst["rel"], d["rel"]),
                         "cosine": min(worst["cosine"], d["cosine"]), "ok": worst["ok"] and d["ok"]}
        if worst is not None:
            out[row["layer"]] = worst
    return out


def _first_bad(diffs, order, skip=()):
    return next((n for n in order if n in diffs and n not in skip and not diffs[n]["ok"]), None)


def _deployed_outputs(shipped, values, outputs, tolerance):
    """(max abs diff, all within tolerance) of the outputs of the net run as deployed."""
    worst, fine = 0.0, True
    for name, blob in outputs.items():
        got, ref = shipped.get(name), values.get(blob)
        d = _diff(got, ref, tolerance) if got is not None and ref is not None else None
        if d is None:
            fine = False
            continue
        worst, fine = max(worst, d["max_abs"]), fine and d["ok"]
    return worst, fine


def _localize_fusion(run, rows, values, outputs, tolerance, layout_differs):
    """Which fusion spoils the deployed outputs? A runtime does not fuse a layer into one whose top is
    read, so reading the tops of the first k layers (the outputs alone decide: they are always read
    faithfully) bisects to the layer A whose top, when read, keeps the outputs right. Its reader then
    computes A fused with itself, wrongly: the run that reads every top but A's shows that reader's
    value. Returns (diffs of the layers after A from that run, index after A), or (None, None)."""
    tops = [list(row["_tops"]) for row in rows]

    def diverges(k):
        got = run([t for ts in tops[:k] for t in ts] + list(outputs))
        return not _deployed_outputs(got, values, outputs, tolerance)[1]

    lo, hi = 0, len(rows)            # reading the first lo layers' tops diverges (lo = 0: the deployed run)
    if diverges(hi):
        return None, None            # not a fusion that reading tops prevents
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if diverges(mid) else (lo, mid)
    wanted = [t for ts in tops[:lo] + tops[hi:] for t in ts] + list(outputs)
    return _compare(rows[hi:], run(wanted), tolerance, layout_differs), hi


# ---------------------------------------------------------------------------------------- the report
def build(graph, prototxt, caffemodel, inputs, layers=None, dialect=None, runtime_names=None, deployed=None,
          tolerance=MODEL_TOLERANCE, model=None, eager=None, progress=None, run_files=None):
    """Run PyTorch and each real runtime on ``inputs`` (tensors, one per graph input) and compare every top.

    ``layers``: the mapped layers of ``graph`` (``caffe.to_layers``; made here for ``dialect`` when
    None). ``deployed``: {runtime: {output blob: array}} from a plain verify (reused, not rerun; for a
    runtime in ``NEVER_FUSES`` that read ``every_top`` it also serves as the every-top read).
    ``eager``: the model's own outputs (the replay must reproduce them). ``progress(done, total)`` is
    told after each runtime. ``run_files``: (prototxt, caffemodel, note) the runtimes run instead, from
    ``tracecap.verify.runnable`` (already translated from bvlc). Returns::

        {"prototxt", "caffemodel", "model", "tolerance", "inputs": {blob: shape}, "outputs": [blob],
         "runtimes": {rt: {"ok", "first_divergence": layer or None, "max_abs_diff": of the outputs}},
         "layers": [{"layer", "type", "top", "op", "module", "where", "shape", "compared",
                     "diffs": {rt: {"max_abs", "rel", "cosine", "ok"}}}]}

    in net order. A layer with several compared tops shows its first as ``top``/``shape`` and the
    worst figures over all of them in ``diffs``; ``diffs`` is {} for a layer not compared.
    """
    import tempfile
    from tracecap import runtimes
    from tracecap.mappers import caffe
    from tracecap.mappers.caffe.inspect import parse_any_dialect
    from tracecap.verify import runnable
    if dialect is None:
        dialect = parse_any_dialect(prototxt)[1]
    if layers is None:
        layers = caffe.to_layers(graph, dialect)
    mapped = {layer.name: layer for layer in layers}
    summary = runtimes.summarize(prototxt)
    _check_same_net(summary, mapped, prototxt)
    values = torch_values(graph, inputs, eager)
    feed = {caffe.caffe_name(b): x.detach().float().numpy() for b, x in zip(graph.inputs, inputs)}
    outputs = {caffe.caffe_name(b): b.name for b in graph.outputs}
    rows, paths = _rows(summary, mapped, values)
    if not any(row["_tops"] for row in rows):
        raise TracecapError(f"{prototxt}: no layer's top is named after a tensor of the capture, so none can be "
                            f"compared (were its blobs renamed?)")
    order = [row["layer"] for row in rows]
    report = Report(prototxt=os.fspath(prototxt), caffemodel=os.fspath(caffemodel), model=model,
                    tolerance=tolerance, inputs={k: list(v.shape) for k, v in feed.items()},
                    outputs=list(outputs), runtimes={}, layers=[])
    report.source_paths = paths
    layout_differs, all_diffs, verdicts = set(), {}, {}
    with tempfile.TemporaryDirectory(prefix="tracecap-layers-") as tmp:
        run_proto, run_model, note = run_files or runnable(prototxt, caffemodel, dialect, tmp)
        names = list(runtime_names or runtimes.available("opencv" if note else dialect))
        if not names:
            raise TracecapError("per-layer report: no real runtime is available here (pip install "
                                "opencv-python-headless, or build Caffe with python -m tracecap.runtimes.build_caffe)")
        wanted = list(dict.fromkeys([t for row in rows for t in row["_tops"]] + list(outputs)))
        for k, rt in enumerate(names):
            def run(blobs, rt=rt, fusion=True):
                return runtimes.run(run_proto, run_model, feed, runtime=rt, blobs=blobs, fusion=fusion)
            shipped = (deployed or {}).get(rt)
            if rt in NEVER_FUSES and shipped is not None and set(wanted) <= set(shipped):
                got = shipped                     # the verify run already read every top
            else:
                # every top read, no layer fused: each value is what its own layer computes
                got = run(wanted, fusion=False)
            diffs = _compare(rows, got, tolerance, layout_differs)
            if shipped is None:
                shipped = got if rt in NEVER_FUSES else run(list(outputs))
            worst, outputs_fine = _deployed_outputs(shipped, values, outputs, tolerance)
            if not outputs_fine and _first_bad(diffs, order, layout_differs) is None:
                # every layer right on its own, the deployed outputs wrong: a fusion is
                found, start = _localize_fusion(run, rows, values, outputs, tolerance, layout_differs)
                if found is not None:
                    diffs = {**{n: d for n, d in diffs.items() if order.index(n) < start}, **found}
            all_diffs[rt], verdicts[rt] = diffs, (worst, outputs_fine)
            if progress is not None:
                progress(k + 1, len(names))
    for row in rows:
        row.pop("_tops")
        row["compared"] = row["layer"] not in layout_differs and all(row["layer"] in d for d in all_diffs.values())
        row["diffs"] = {rt: d[row["layer"]] for rt, d in all_diffs.items()} if row["compared"] else {}
        report["layers"].append(row)
    compared = [row["layer"] for row in rows if row["compared"]]
    for rt, (worst, outputs_fine) in verdicts.items():
        first = _first_bad(all_diffs[rt], compared)
        report["runtimes"][rt] = {"ok": first is None and outputs_fine, "first_divergence": first,
                                  "max_abs_diff": worst}
    return report


def ok(report):
    return all(r["ok"] for r in report["runtimes"].values())


# ---------------------------------------------------------------------------------------- text
def _num(x):
    return f"{x:.3g}" if isinstance(x, float) else "-"


def format_report(report):
    """The per-layer table; the first layer beyond tolerance on each runtime marked, its source line printed."""
    rts = list(report["runtimes"])
    firsts = {}
    for rt, r in report["runtimes"].items():
        if r["first_divergence"]:
            firsts.setdefault(r["first_divergence"], []).append(rt)
    head = ["layer", "type", "op", "module", "file:line", "shape"]
    for rt in rts:
        head += [f"{rt} max abs", "rel", "cosine"]
    table = [head]
    for row in report["layers"]:
        cells = [row["layer"], row["type"], row["op"] or "-", row["module"] or "-", row["where"] or "-",
                 "x".join(map(str, row["shape"])) or "-"]
        if row["compared"]:
            for rt in rts:
                d = row["diffs"][rt]
                cells += [_num(d["max_abs"]), _num(d["rel"]), f"{d['cosine']:.6f}"]
        elif row["type"] != "Input":
            cells.append("not compared")
        if row["layer"] in firsts:
            mark = "<< first beyond tolerance on " + ", ".join(firsts[row["layer"]])
            cells += [""] * (len(head) - len(cells)) + [mark]
        table.append(cells)
    width = [max(len(r[i]) for r in table if i < len(r)) for i in range(len(head))]
    lines = [f"per-layer comparison with PyTorch: {report['prototxt']} (tolerance {report['tolerance']:g} x "
             f"max(1, max|ref|))"]
    for cells in table:
        lines.append("  ".join(c.ljust(width[i]) if i < len(width) else c for i, c in enumerate(cells)).rstrip())
    paths = getattr(report, "source_paths", {})
    for rt, r in report["runtimes"].items():
        verdict = f"{rt}: outputs max abs diff {r['max_abs_diff']:.3g}"
        if r["first_divergence"] is None:
            lines.append(verdict + (", every layer within tolerance" if r["ok"] else ", BEYOND TOLERANCE"))
            continue
        row = next(x for x in report["layers"] if x["layer"] == r["first_divergence"])
        lines.append(f"{verdict}; first divergence at layer {row['layer']} ({row['type']}), op "
                     f"`{row['op']}` in module `{row['module'] or '<top level>'}` at {row['where'] or '?'}")
        path_line = paths.get(row["layer"])
        text = linecache.getline(*path_line).strip() if path_line else ""
        if text:
            lines.append(f"    {path_line[1]} | {text}")
    lines.append("ok" if ok(report) else "DIVERGES")
    return "\n".join(lines)
