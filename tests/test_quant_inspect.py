"""``tracecap inspect`` on quantized checkpoints: state dicts, whole modules and TorchScript archives,
read without running any code from the file, showing each integer weight's dtype, scale(s),
zero point(s), axis and memory layout."""
import io
import json
import pickle
import warnings
import zipfile

import pytest
import torch

from tracecap.checkpoint import inspect_checkpoint, load_checkpoint
from tracecap.cli import main
from tracecap.errors import CheckpointError

import quant_models as M


@pytest.fixture(scope="module")
def qcnn():
    return M.eager(M.CNN, "fbgemm", per_channel=True)


def _save(kind, model, path):
    with warnings.catch_warnings(), M.engine("fbgemm"):
        warnings.simplefilter("ignore")
        if kind == "state_dict":
            torch.save(model.state_dict(), path)
        elif kind == "whole":
            torch.save(model, path)
        elif kind == "script":
            torch.jit.save(torch.jit.script(model), path)
        else:
            torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 8, 8)), path)
    return path


def _expected(model):
    """Every tensor of the model's state dict, with packed (weight, bias) tuples as [0], [1]."""
    out = {}
    for key, value in model.state_dict().items():
        if isinstance(value, tuple):
            out.update({f"{key}[{i}]": t for i, t in enumerate(value) if isinstance(t, torch.Tensor)})
        elif isinstance(value, torch.Tensor):
            out[key] = value
    return out


@pytest.mark.parametrize("kind", ["state_dict", "whole", "script", "trace"])
def test_every_quantized_weight_is_read_with_its_parameters(qcnn, kind, tmp_path):
    path = _save(kind, qcnn, tmp_path / f"{kind}.pt")
    report = inspect_checkpoint(path)
    found = {t["name"]: t for t in report["tensors"]}
    expected = _expected(qcnn)
    weights = [k for k, t in expected.items() if t.is_quantized]
    assert {"conv1.weight", "conv2.weight", "fc._packed_params._packed_params[0]"} <= set(weights)
    for name in weights:
        q, ref = found[name]["quantization"], expected[name]
        assert q["qscheme"] == "per_channel_affine" and q["axis"] == 0
        assert q["scale"] == [float(v) for v in ref.q_per_channel_scales()]
        assert q["zero_point"] == [int(v) for v in ref.q_per_channel_zero_points()]
        assert q["stride"] == list(ref.stride())
        assert q["int_range"] == [int(ref.int_repr().min()), int(ref.int_repr().max())]
    assert found["conv1.weight"]["quantization"]["layout"] == "OHWI"        # channels-last, as PyTorch keeps it
    assert found["conv1.weight"]["quantization"]["stride"] == [27, 1, 9, 3]
    assert found["fc._packed_params._packed_params[0]"]["quantization"]["layout"] == "OI"
    # and the values themselves come back exactly
    obj = load_checkpoint(path)
    if kind == "state_dict":
        assert torch.equal(obj["conv2.weight"].int_repr(), qcnn.conv2.weight().int_repr())
    if kind == "script":
        assert any("TorchScript archive" in n and "never run" in n for n in report["notes"])
        assert any("quantized::conv2d" in n for n in report["notes"])
        assert report["format"] == "torchscript"


def test_cli_shows_the_quantization_table(qcnn, tmp_path, capsys):
    path = _save("script", qcnn, tmp_path / "model.pt")
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "quantized tensors (real = (int - zero_point) * scale" in text
    assert "OHWI" in text and "27x1x9x3" in text and "conv2.weight" in text
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    entry = next(t for t in data["tensors"] if t["name"] == "conv2.weight")
    assert entry["quantization"]["axis"] == 0 and len(entry["quantization"]["scale"]) == 8


def test_a_torchscript_archive_cannot_run_code(tmp_path):
    """A data.pkl that names os.system is refused; the code/ files are only ever read as text."""
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("evil/code/__torch__.py", "import os\nos.system('echo pwned')\n")
        z.writestr("evil/version", "3")
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="refusing to load: the pickle refers to (os|posix).system"):
        inspect_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    assert main(["inspect", str(tmp_path / "evil.pt")]) == 2
