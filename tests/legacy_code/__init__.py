"""Model and script code written the way it was in 2017 (PyTorch 0.2/0.3, often Python 2), for the
tests of tracecap.legacy.compat. Files with Python 2 syntax (py2_syntax.py) cannot be imported: they
are loaded by `tracecap convert file.py:Class --legacy 0.3`."""
