"""tracecap.legacy.source_rewrite: `async=` keyword arguments and print statements of Python 2-era model
files, rewritten by tokens (strings, comments and definitions untouched, lines kept) when loaded under compat."""
import os
import sys
import textwrap
import warnings

import pytest

from tracecap.legacy import CompatError, CompatWarning, compat
from tracecap.legacy.source_rewrite import ModelFileLoader, rewrite


def _rewritten(text):
    source, found = rewrite(textwrap.dedent(text))
    return source, [(r.line, r.what.split(" ")[0]) for r in found]


@pytest.mark.parametrize("old,new", [
    ("x = x.cuda(async=True)\n", "x = x.cuda(non_blocking=True)\n"),
    ("y = t.cuda(0, async = True)\n", "y = t.cuda(0, non_blocking = True)\n"),
    ("copy(a,\n     async=True)\n", "copy(a,\n     non_blocking=True)\n"),
    ("print x\n", "print( x)\n"),
    ("print 'loss', loss.data[0], 3\n", "print( 'loss', loss.data[0], 3)\n"),
    ("print x,\n", 'print( x, end=" ")\n'),
    ("print >>sys.stderr, 'a', b\n", "print( 'a', b, file=sys.stderr)\n"),
    ("print >>f\n", "print( file=f)\n"),
    ("print >>f, x,\n", 'print( x, end=" ", file=f)\n'),
    ("if x: print x; y = 1\n", "if x: print( x); y = 1\n"),
    ("print 'a', (b,\n       c)  # note\n", "print( 'a', (b,\n       c))  # note\n"),
    ("print not x\n", "print( not x)\n"),
])
def test_each_form_is_rewritten_in_place(old, new):
    source, found = rewrite(old)
    assert source == new and len(found) == 1
    assert compile(source, "<test>", "exec")
    assert source.count("\n") == old.count("\n")


@pytest.mark.parametrize("text", [
    "s = 'x.cuda(async=True)'  # x.cuda(async=True)\n",
    "def f(async=True):\n    pass\n",
    "class A(Base, async=1):\n    pass\n",
    "print\n",                      # valid Python 3 (a no-op), left alone
    "print(x)\n",
    "print in names\n",             # valid Python 3 with the print function
    "print not in names\n",
    "x = print\n",
    "d = {'print': 1}\n",
    "f(print)\n",
    "async def g():\n    pass\n",
])
def test_what_is_not_the_idiom_is_left_alone(text):
    assert rewrite(text) == (text, [])


def test_a_python2_file_keeps_its_line_numbers():
    source, found = _rewritten("""\
        import sys
        def f(x):
            x = x.cuda(async=True)
            print "shape", x.size()
            print >>sys.stderr, "done"
            return x
        """)
    assert found == [(3, "`async=`"), (4, "`print`"), (5, "`print`")]
    assert source.splitlines()[2] == "    x = x.cuda(non_blocking=True)"
    assert source.count("\n") == 6


def _write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def load_model_file(path, name):
    """Load a file as `tracecap convert file.py:Class` does (rewritten when compat is active)."""
    loader = ModelFileLoader(name, str(path))
    module = type(sys)(name)
    module.__file__ = str(path)
    loader.exec_module(module)
    return module


def test_loading_under_compat_rewrites_the_file_and_its_folder_siblings(tmp_path, capsys):
    _write(tmp_path, "blocks_py2.py", """\
        def shout(x):
            print "block", x
            return x
        """)
    main = _write(tmp_path, "net_py2.py", """\
        import blocks_py2
        def run(x):
            print "run", x,
            return blocks_py2.shout(x)
        """)
    sys.path.insert(0, str(tmp_path))
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            with compat():
                module = load_model_file(main, "net_py2")
        assert module.run(3) == 3
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("blocks_py2", None)
    assert capsys.readouterr().out == "run 3 block 3\n"
    sites = sorted((os.path.basename(w.filename), w.lineno) for w in record if issubclass(w.category, CompatWarning))
    assert sites == [("blocks_py2.py", 2), ("net_py2.py", 3)]
    assert not (tmp_path / "__pycache__").exists()  # rewritten code is never cached


def test_without_compat_a_fixable_syntax_error_says_how(tmp_path):
    path = _write(tmp_path, "old.py", """\
        import torch
        def move(x):
            return x.cuda(async=True)
        """)
    with pytest.raises(CompatError) as err:
        load_model_file(path, "old")
    message = str(err.value)
    assert f"{path}:3:" in message and "`async=` keyword argument" in message and "--legacy 0.3" in message


def test_other_python2_syntax_is_an_error_naming_the_line(tmp_path):
    path = _write(tmp_path, "older.py", """\
        try:
            pass
        except ValueError, e:
            print e
        """)
    with pytest.raises(CompatError, match=f"{path}:3: .*ported by hand"):
        with compat():
            load_model_file(path, "older")
    with pytest.raises(SyntaxError):  # no rewrite would help: the plain error, as Python gives it
        load_model_file(_write(tmp_path, "broken.py", "def (:\n"), "broken")
