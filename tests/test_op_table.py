"""tools/op_table.py renders the README op table from a report and the registry, and --check sees staleness."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("op_table", ROOT / "tools" / "op_table.py")
op_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(op_table)


def _mapper(doc):
    def fn(node, ctx):
        return []
    fn.__doc__ = doc
    return fn


MAPPERS = {"add": _mapper("input ± alpha·other, any broadcast.\n\nMore."), "flip": _mapper(None),
           "pad": _mapper("Zero pads | folded.")}
RECORDS = [
    {"case": "add_row", "ops": ["add"], "runtime": "opencv", "status": "exact", "max_abs_diff": 1.2e-7,
     "layers": 2, "layer_types": {"add": ["Deconvolution", "Eltwise"]}},
    {"case": "add_row", "ops": ["add"], "runtime": "caffe", "status": "exact", "max_abs_diff": 0.0,
     "layers": 2, "layer_types": {"add": ["Deconvolution", "Eltwise"]}},
    {"case": "add_const", "ops": ["add"], "runtime": "opencv", "status": "exact", "max_abs_diff": 3e-6,
     "layers": 1, "layer_types": {"add": ["Scale"]}},
    {"case": "pad_reflect", "ops": ["pad"], "runtime": None, "status": "refused", "reason": "pad (1, 1) (reflect)"},
    {"case": "erf", "ops": ["erf"], "runtime": None, "status": "refused", "reason": "no Caffe mapping for `erf`"},
]


def _rows(table):
    return {line.split(" | ")[0].strip("| `"): line for line in table.splitlines()[2:]}


def test_render_joins_report_and_registry():
    rows = _rows(op_table.render(RECORDS, MAPPERS))
    assert set(rows) == {"add", "flip", "pad", "erf"}
    add = rows["add"]
    assert "1: `add_row`; on one runtime only: `add_const`" in add
    assert "| 3e-06 / 0 |" in add and "Deconvolution, Eltwise, Scale" in add
    assert add.endswith("input ± alpha·other, any broadcast. |")  # the docstring's first paragraph
    assert "| untested |" in rows["flip"]
    assert "`pad_reflect`: pad (1, 1) (reflect)" in rows["pad"] and "Zero pads \\| folded." in rows["pad"]
    assert "no Caffe mapper" in rows["erf"] and "`erf`: no Caffe mapping for `erf`" in rows["erf"]


def test_check_mode_and_rewrite(tmp_path, monkeypatch):
    report = tmp_path / "r.jsonl"
    report.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{op_table.START}\nold table\n{op_table.END}\n\nafter\n")
    import tracecap.mappers.caffe as caffe_pkg
    monkeypatch.setattr(caffe_pkg, "MAPPERS", MAPPERS)
    args = ["--report", str(report), "--readme", str(readme)]
    assert op_table.main(args + ["--check"]) == 1
    assert "old table" in readme.read_text()
    assert op_table.main(args) == 0
    text = readme.read_text()
    assert "old table" not in text and "`add_row`" in text and text.endswith(f"{op_table.END}\n\nafter\n")
    assert op_table.main(args + ["--check"]) == 0


def test_missing_markers_are_an_error():
    with pytest.raises(SystemExit, match="markers"):
        op_table.replace_table("no markers here", "| table |\n")


def test_readme_has_the_generated_table():
    text = (ROOT / "README.md").read_text()
    assert op_table.START in text and op_table.END in text
    table = text.split(op_table.START)[1].split(op_table.END)[0]
    from tracecap.mappers.caffe import MAPPERS as real
    listed = {line.split(" | ")[0].strip("| `") for line in table.strip().splitlines()[2:]}
    assert set(real) <= listed, f"ops missing from the README table: {sorted(set(real) - listed)}"
