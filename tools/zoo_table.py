"""Turn a TRACECAP_REPORT of tests/test_caffe_models.py into the README's verified-models table.

    TRACECAP_REQUIRE_CAFFE=1 TRACECAP_REPORT=report.jsonl pytest -q tests/test_caffe_models.py
    python tools/zoo_table.py report.jsonl                 # print the table
    python tools/zoo_table.py report.jsonl --readme README.md   # replace the table in the README

Each report line is one model on one runtime (model, input, layers, params, convert_seconds,
runtime, max_abs_diff; max_abs_diff is null with a ``note`` where the runtime refused the
file). Rows come in the zoo's order; a model measured twice keeps its last line.
"""
from __future__ import annotations

import argparse
import json
import sys

RUNTIMES = (("opencv", "OpenCV 4.14"), ("caffe", "Caffe (brocolli 9.0.2)"))
HEADER = ["model", "input", "layers", "params", *(title for _, title in RUNTIMES), "convert s"]
SECTION = "## Verified models"


def read_report(path):
    """{model: {"row": last line's model fields, runtime: line}} in first-seen order."""
    models = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                models.setdefault(entry["model"], {})[entry["runtime"]] = entry
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"{path}:{number}: not a report line ({e})")
    return models


def _params(n):
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _diff(entry):
    if entry is None:
        return "not run"
    if entry.get("max_abs_diff") is None:
        return entry.get("note", "refused")
    return f"{entry['max_abs_diff']:.1e}"


def table(models, order=None):
    """Markdown lines of the table; ``order`` (model names) sorts the rows."""
    names = list(models)
    if order:
        rank = {n: i for i, n in enumerate(order)}
        names.sort(key=lambda n: rank.get(n, len(rank)))
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name in names:
        runs = models[name]
        any_run = next(iter(runs.values()))
        cells = [name, "×".join(str(d) for d in any_run["input"]), str(any_run["layers"]),
                 _params(any_run["params"]), *(_diff(runs.get(rt)) for rt, _ in RUNTIMES),
                 f"{max(r['convert_seconds'] for r in runs.values()):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def replace_table(text, lines):
    """``text`` with the first table after the SECTION heading replaced by ``lines``."""
    rows = text.split("\n")
    try:
        start = rows.index(SECTION)
    except ValueError:
        raise SystemExit(f"no '{SECTION}' heading in the README")
    first = next((i for i in range(start, len(rows)) if rows[i].startswith("|")), None)
    if first is None:
        raise SystemExit(f"no table after '{SECTION}'")
    last = first
    while last + 1 < len(rows) and rows[last + 1].startswith("|"):
        last += 1
    return "\n".join(rows[:first] + lines + rows[last + 1:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="JSON lines written under TRACECAP_REPORT")
    ap.add_argument("--readme", help="replace the verified-models table in this README")
    args = ap.parse_args(argv)
    try:
        from tracecap.legacy_models import NAMES
    except ImportError:
        NAMES = None
    lines = table(read_report(args.report), NAMES)
    if args.readme:
        with open(args.readme) as f:
            text = f.read()
        with open(args.readme, "w") as f:
            f.write(replace_table(text, lines))
    else:
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
