"""Reviving 2017-era models: old semantics, old files, old numbers.

Each idea has its own module here (compatibility with PyTorch 0.1-0.3 semantics, Torch7
networks, rebuilding whole-module checkpoints); this package only gathers their public names.
"""
from .errors import RevivalError  # noqa: E402
from .torch7_nn import build_network  # noqa: E402
from .rebuild import rebuild_module  # noqa: E402
from .checkpoint_spec import resolve_checkpoint_spec  # noqa: E402
from .compat import compat, CompatError, CompatWarning  # noqa: E402

__all__ = ["RevivalError", "build_network", "rebuild_module", "resolve_checkpoint_spec", "compat", "CompatError",
           "CompatWarning"]
