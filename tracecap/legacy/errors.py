"""The error of tracecap.legacy: an old model file cannot become an equivalent PyTorch module."""
from tracecap.errors import TracecapError


class RevivalError(TracecapError):
    """A Torch7 network or a whole-module checkpoint cannot be rebuilt exactly; the message says
    which classes (and where in the tree) stand in the way, and what would make it possible."""
