"""The README's Python example runs as written, and its op table lists only mapped ops."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert float(printed[-1]) < 1e-4
    assert (tmp_path / "resnet18.caffemodel").stat().st_size > 40_000_000


def test_model_table_is_filled():
    assert "MODEL_TABLE" not in README.read_text()
