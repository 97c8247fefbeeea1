"""The error ``tracecap.quant`` raises for input it refuses (a float model, a damaged manifest ...)."""
from tracecap.errors import TracecapError


class QuantError(TracecapError):
    """A graph, manifest or input that the quantized export or executor cannot take."""
