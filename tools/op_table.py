"""Generate the README's "Supported ops" table from the mapper registry and the per-op test results.

    python tools/op_table.py                   # run the per-op tests, rewrite the README table
    python tools/op_table.py --check           # exit 1 if the README table is stale
    python tools/op_table.py --report r.jsonl  # use a report written earlier instead of running the tests

The per-op test modules (``tests/test_caffe_ops.py``, ``tests/test_ops_*.py``) run with
``TRACECAP_OP_REPORT`` set, so every case appends one JSON line (``tests/op_cases.py``): the ops it is
about, the runtime, "exact" with the max abs diff and the Caffe layer types per op, or "refused" with
the reason. Every op of ``tracecap.mappers.caffe.MAPPERS`` gets a row (an op without a case says
"untested"); ops the tests see refused without a mapper get one too. The table goes between
``<!-- op-table:start -->`` and ``<!-- op-table:end -->``. A failing test run writes nothing.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- op-table:start -->", "<!-- op-table:end -->"
RUNTIMES = ("opencv", "caffe")
MAX_LISTED = 12


def test_modules(root=ROOT):
    return [os.path.join(root, "tests", "test_caffe_ops.py")] + sorted(
        glob.glob(os.path.join(root, "tests", "test_ops_*.py")))


def run_tests(report, root=ROOT):
    """Run the per-op test modules with the report on; return pytest's exit status."""
    env = dict(os.environ, TRACECAP_OP_REPORT=report)
    env.setdefault("TRACECAP_REQUIRE_CAFFE", "1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *test_modules(root)]
    return subprocess.call(cmd, cwd=root, env=env)


def read_report(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _diff(value):
    return "—" if value is None else ("0" if value == 0 else f"{value:.0e}")


def _listed(items):
    items = sorted(items)
    shown = ", ".join(f"`{i}`" for i in items[:MAX_LISTED])
    return shown + (f" (+{len(items) - MAX_LISTED})" if len(items) > MAX_LISTED else "")


def _note(fn):
    """The first paragraph of the mapper's docstring, on one line."""
    doc = (getattr(fn, "__doc__", None) or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in doc.splitlines()).replace("``", "`")


def render(records, mappers):
    """The markdown table for ``records`` (report lines) and ``mappers`` ({op: mapper function})."""
    exact, refused = {}, {}
    for r in records:
        for op in r["ops"]:
            if r["status"] == "exact":
                row = exact.setdefault(op, {"cases": {}, "worst": {}, "layers": set()})
                row["cases"].setdefault(r["case"], set()).add(r["runtime"])
                row["worst"][r["runtime"]] = max(row["worst"].get(r["runtime"], 0.0), r["max_abs_diff"])
                row["layers"].update(r.get("layer_types", {}).get(op, ()))
            elif r["status"] == "refused":
                refused.setdefault(op, {}).setdefault(r["reason"], set()).add(r["case"])
    lines = ["| op | exact on both runtimes (cases) | max abs diff OpenCV / Caffe | Caffe layers | refused (why) | notes |",
             "|---|---|---|---|---|---|"]
    for op in sorted(set(mappers) | set(refused)):
        row = exact.get(op)
        if row:
            both = [c for c, rts in row["cases"].items() if set(RUNTIMES) <= rts]
            partial = [c for c, rts in row["cases"].items() if not set(RUNTIMES) <= rts]
            cases = f"{len(both)}: {_listed(both)}" if both else "0"
            if partial:
                cases += f"; on one runtime only: {_listed(partial)}"
            worst = " / ".join(_diff(row["worst"].get(rt)) for rt in RUNTIMES)
            layers = ", ".join(sorted(row["layers"])) or "—"
        else:
            cases, worst, layers = ("untested" if op in mappers else "—"), "—", "—"
        why = "; ".join(f"{_listed(cs)}: {reason}" for reason, cs in sorted(refused.get(op, {}).items())) or "—"
        note = _note(mappers[op]) if op in mappers else "no Caffe mapper"
        lines.append("| " + " | ".join(_cell(c) for c in (f"`{op}`", cases, worst, layers, why, note)) + " |")
    return "\n".join(lines) + "\n"


def replace_table(text, table):
    """``text`` with the part between the markers replaced by ``table``."""
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise SystemExit(f"op_table: the README has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}{END}{tail}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", help="an existing TRACECAP_OP_REPORT file (default: run the per-op tests)")
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the README table differs, write nothing")
    ap.add_argument("--save-report", metavar="PATH", help="keep the report of the test run here")
    args = ap.parse_args(argv)
    if args.report:
        records = read_report(args.report)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = os.path.join(tmp, "ops.jsonl")
            status = run_tests(report)
            if status != 0:
                print(f"op_table: the per-op tests failed (exit {status}); the table is not written", file=sys.stderr)
                return 1
            records = read_report(report)
            if args.save_report:
                with open(args.save_report, "w") as f:
                    f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
    sys.path.insert(0, ROOT)
    from tracecap.mappers.caffe import MAPPERS
    with open(args.readme, encoding="utf-8") as f:
        text = f.read()
    new = replace_table(text, render(records, MAPPERS))
    if args.check:
        if new != text:
            print(f"op_table: the op table in {args.readme} is stale; run python tools/op_table.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(args.readme, "w", encoding="utf-8") as f:
            f.write(new)
    print(f"op_table: {len(MAPPERS)} ops, {len({r['case'] for r in records})} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
