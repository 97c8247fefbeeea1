"""tools/zoo_table.py turns a TRACECAP_REPORT into the README table; the README's table is complete."""
import json
import re
import sys
from pathlib import Path

import pytest

from tracecap import legacy_models as zoo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import zoo_table  # noqa: E402


def _row(model, runtime, diff, note=None, **extra):
    row = {"model": model, "input": [1, 3, 224, 224], "layers": 37, "params": 138357544,
           "convert_seconds": 2.5, "runtime": runtime, "max_abs_diff": diff, **extra}
    if note:
        row["note"] = note
    return json.dumps(row)


def test_report_becomes_rows_in_zoo_order(tmp_path):
    report = tmp_path / "r.jsonl"
    report.write_text("\n".join([
        _row("vgg16", "opencv", 5.5e-05), _row("vgg16", "caffe", None, note="not loaded (> 512 MiB)"),
        _row("alexnet", "caffe", 2.8e-05, convert_seconds=1.44), _row("alexnet", "opencv", 4.6e-05)]) + "\n")
    lines = zoo_table.table(zoo_table.read_report(report), zoo.NAMES)
    assert lines[0] == "| model | input | layers | params | OpenCV 4.14 | Caffe (brocolli 9.0.2) | convert s |"
    assert lines[2] == "| alexnet | 1×3×224×224 | 37 | 138.4M | 4.6e-05 | 2.8e-05 | 2.5 |"
    assert lines[3] == "| vgg16 | 1×3×224×224 | 37 | 138.4M | 5.5e-05 | not loaded (> 512 MiB) | 2.5 |"

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Verified models\n\ntext\n\n| old | table |\n|---|---|\n| a | b |\n\nafter\n")
    assert zoo_table.main([str(report), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| old |" not in text and "| vgg16 |" in text
    assert text.startswith("# x\n\n## Verified models\n\ntext\n\n| model |") and text.endswith("|\n\nafter\n")


def test_bad_report_line_names_the_line(tmp_path):
    report = tmp_path / "r.jsonl"
    report.write_text(_row("alexnet", "opencv", 1e-5) + "\n{not json\n")
    with pytest.raises(SystemExit, match=r"r.jsonl:2: not a report line"):
        zoo_table.read_report(report)


def test_readme_table_lists_every_zoo_model_on_both_runtimes():
    text = (ROOT / "README.md").read_text()
    section = text[text.index(zoo_table.SECTION):]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (\w+) \|.*$", section, re.M)}
    for name in zoo.NAMES:
        assert name in rows, f"README's verified-models table has no row for {name}"
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[4] != "not run" and cells[5] != "not run", rows[name]
