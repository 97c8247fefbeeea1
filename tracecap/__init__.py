"""tracecap: convert PyTorch models to Caffe by watching them run."""
from tracecap.errors import (  # noqa: F401
    TracecapError, CaptureError, MappingError, UnsupportedOpError, CheckpointError, RuntimeFailure,
)
from tracecap.graph import Graph, Node, Blob  # noqa: F401
from tracecap.capture import capture  # noqa: F401

__version__ = "0.1.0"
from tracecap.checkpoint import load_checkpoint, fix_state_dict  # noqa: E402,F401


def __getattr__(name):
    """``tracecap.export`` (tracecap.convert.export), imported on first use: it pulls in the whole pipeline."""
    if name == "export":
        from tracecap.convert import export
        return export
    raise AttributeError(f"module 'tracecap' has no attribute {name!r}")
