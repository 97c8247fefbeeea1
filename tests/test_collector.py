"""tracecap.collector: old objects are set aside from the garbage collector while tracecap works, and
handed back after (a cycle made garbage afterwards is still collected), except in the CLI's process."""
import gc
import subprocess
import sys
import textwrap

import torch

import tracecap
from tracecap import collector


class _Cycle:
    def __init__(self):
        self.me = self


def test_old_objects_are_set_aside_and_handed_back():
    import weakref
    old = _Cycle()
    dead = weakref.ref(old)
    assert gc.get_freeze_count() == 0
    with collector.older_objects_set_aside():
        assert gc.get_freeze_count() > 0
        inner = _Cycle()
        inner_ref = weakref.ref(inner)
        del inner
        gc.collect()
        assert inner_ref() is None  # what is made inside is collected as usual
    assert gc.get_freeze_count() == 0
    del old
    gc.collect()
    assert dead() is None  # handed back: the caller's garbage is collected


def test_a_freeze_of_the_callers_is_left_alone():
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with collector.older_objects_set_aside():
            pass
        assert gc.get_freeze_count() == count  # not unfrozen by us
    finally:
        gc.unfreeze()


def test_export_and_save_hand_everything_back(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    tracecap.export(model, torch.randn(1, 3, 8, 8), tmp_path / "m", verify=False)
    assert gc.get_freeze_count() == 0
    with torch.no_grad(), tracecap.capture() as cap:
        model(torch.randn(1, 3, 8, 8))
    from tracecap.mappers import caffe
    caffe.save(cap.graph, tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()


def test_the_command_leaves_them_set_aside(tmp_path):
    """The console script's process ends with the command: no full collection is set off after it."""
    script = textwrap.dedent(f"""
        import gc, sys
        from tracecap import cli
        status = cli.run(["convert", "lenet", "-o", {str(tmp_path)!r}, "--quiet"])
        print(status, gc.get_freeze_count() > 0)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["0", "True"]
    assert (tmp_path / "lenet.caffemodel").stat().st_size > 0


def test_the_console_script_is_run():
    import pathlib
    setup = pathlib.Path(__file__).resolve().parents[1] / "setup.py"
    assert '"tracecap=tracecap.cli:run"' in setup.read_text()
    main = pathlib.Path(tracecap.__file__).with_name("__main__.py").read_text()
    assert "run()" in main
