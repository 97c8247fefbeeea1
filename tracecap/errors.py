"""Every error tracecap raises on purpose derives from TracecapError.

Users catch one base class; each subclass says which stage refused the input.
Messages name the op, the module path and the user's source file:line where known.
"""


class TracecapError(Exception):
    """Base of all errors tracecap raises deliberately."""


class CaptureError(TracecapError):
    """Recording a forward pass or building its graph failed."""


class MappingError(TracecapError):
    """A captured graph cannot be expressed in the target format."""


class UnsupportedOpError(MappingError):
    """One or more ops have no mapping; the message lists every one of them.

    ``problems`` holds one line per refused node; ``refusals`` the same as (node, reason) pairs,
    for tools that need the op (``node.op``), its module path or its source line.
    """

    def __init__(self, message, problems=(), refusals=()):
        super().__init__(message)
        self.problems = list(problems)
        self.refusals = list(refusals)


class CheckpointError(TracecapError):
    """A checkpoint file is unreadable, damaged, hostile or of an unknown format."""


class RuntimeFailure(TracecapError):
    """A real runtime (OpenCV, Caffe) refused or failed to run a model.

    ``log`` carries the runtime's own diagnostic (e.g. Caffe's CHECK line).
    """

    def __init__(self, message, log=""):
        super().__init__(message)
        self.log = log
