"""docs/quantized.md runs as written: its code blocks execute in order, the lists their print
comments state are what they print, and its numbers are the user's (when ../shared is here)."""
import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "quantized.md"
CASE = Path(__file__).resolve().parents[2] / "shared" / "quantized-case.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def _expected_prints(block):
    """The printed line each ``print(...)  # [..]`` comment promises, in order (None: not checked).

    ``# without VNNI: [..]; with VNNI: [..]`` promises the first where this machine's fbgemm saturates
    int16 product pairs (the probe), the second where it does not."""
    from tracecap.quant.engines import probe_int16_pairs
    out = []
    for line in block.splitlines():
        if line.lstrip().startswith("print("):
            comment = line.split("# ", 1)[1] if "# " in line else ""
            if comment.startswith("without VNNI: "):
                without, with_ = comment[len("without VNNI: "):].split("; with VNNI: ")
                comment = without if probe_int16_pairs("fbgemm") else with_
            out.append(comment.split("  ")[0] if comment.startswith("[") else None)
    return out


def test_the_worked_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    import torch
    engine = torch.backends.quantized.engine
    try:
        for i, block in enumerate(_blocks()):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(block, f"docs/quantized.md, code block {i + 1}", "exec"), namespace)
            printed = buf.getvalue().splitlines()
            expected = _expected_prints(block)
            assert len(printed) == len(expected), (i, printed)
            for got, want in zip(printed, expected):
                if want is not None:
                    assert got == want, f"block {i + 1}: printed {got}, the doc says {want}"
    finally:
        torch.backends.quantized.engine = engine
    assert (tmp_path / "user_mlp" / "manifest.json").is_file() and (tmp_path / "mlp.quant.json").is_file()


def test_the_numbers_are_the_users():
    if not CASE.is_file():
        pytest.skip("../shared/quantized-case.md is not beside this checkout")
    case = CASE.read_text()
    namespace = {}
    exec(compile(_blocks()[0], "docs/quantized.md, code block 1", "exec"), namespace)

    def numbers(text):
        return [float(v) for v in re.findall(r"-?\d+\.\d+|-?\d+", text)]
    cells = [line.split("|")[1:3] for line in case.splitlines() if line.startswith("| `")]
    weight_rows = [value for key, value in cells if "weight" in key]
    bias_rows = [value for key, value in cells if "bias" in key]
    assert numbers(weight_rows[0]) == [round(v, 4) for v in namespace["w1"].flatten().tolist()]
    assert numbers(weight_rows[1]) == [round(v, 4) for v in namespace["w2"].flatten().tolist()]
    assert numbers(bias_rows[0]) == [round(v, 4) for v in namespace["b1"].tolist()]
    assert numbers(bias_rows[1]) == [round(v, 4) for v in namespace["b2"].tolist()]
    assert f"scale {namespace['s_w1']!r}" in case and f"scale {namespace['s_w2']!r}" in case
    assert "0.0039 / 0" in case and "0.0297 / 0" in case and "1.5963 / 243" in case
    assert "[[1, 1], [1, 0], [0, 1], [0, 0], [0, 0.9], [0, 0.75], [0, 0.25]]" in case
    assert "argmax = [0, 3, 0, 3, 0, 0, 3]" in case and "argmax = [0, 1, 2, 3, 4, 5, 1]" in case
