"""Op categories: the sets of canonical (or, where noted, raw) op names that share a rule.

The builder and the passes decide by category, not by name lists of their own: what only
reads metadata, what re-presents its input, what takes data out of torch, what is a cast.
"""

# Calls that only read metadata (raw names): they return no tensor and carry no data out of the graph.
METADATA = frozenset({
    "size", "dim", "shape", "numel", "__len__", "is_contiguous", "dtype", "device", "is_cuda", "stride",
    "storage_offset", "requires_grad", "ndimension", "nelement", "element_size", "is_floating_point",
    "layout", "names", "grad_fn", "is_leaf", "__format__", "__repr__", "__str__", "data_ptr", "get_device",
    "_version", "__hash__", "ndim", "is_quantized", "is_sparse", "is_complex", "grad", "is_mkldnn",
    "_is_view", "_base", "untyped_storage", "storage", "has_names", "is_nested", "is_meta", "__dir__",
    "__reduce_ex__", "__deepcopy__", "output_nr", "_cdata", "retains_grad", "is_inference", "__array__",
})
# Calls that turn tensor data into Python values (raw names): what is computed from them is invisible.
ESCAPES = frozenset({"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__array__"})

# The same values under a new tensor object, storage shared (x.data, x.detach()): one blob for both.
ALIAS_OPS = frozenset({"alias", "detach"})
# Ops that only re-present their input: removed by passes.drop_identities.
IDENTITY_OPS = frozenset({"contiguous", "clone", "detach", "alias"})
# Dropout in any form: the identity in eval mode (training=False).
DROPOUT_OPS = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"})
# Ops that change dtype or storage only: the identity when shape and dtype do not change.
CAST_OPS = frozenset({"float", "to", "type_as", "double", "half", "type"})
# Broadcasts to a shape: the identity when the shape does not change.
EXPAND_OPS = frozenset({"expand", "expand_as"})
# Reshapes: the identity when the shape does not change.
RESHAPE_OPS = frozenset({"view", "reshape", "flatten", "view_as", "reshape_as"})

# The float -> integer and integer -> float boundaries of a quantized model (torch.ao.quantization).
QUANTIZE_OPS = frozenset({"quantize_per_tensor", "quantize_per_channel"})
DEQUANTIZE_OPS = frozenset({"dequantize"})
# Ops whose result depends on these operands' shape and dtype only, never on their values
# (``zeros_like(x)``, ``x.new_zeros(n)``, ``x.fill_(0)``, ``c.expand_as(x)``): with every other
# operand constant, the result is a constant - the graph is specialised to the traced shapes anyway.
SHAPE_ONLY_ARGS = {
    "zeros_like": ("input",), "ones_like": ("input",), "full_like": ("input",),
    "new_zeros": ("input",), "new_ones": ("input",), "new_full": ("input",),
    "zero": ("input",), "fill": ("input",),
    "expand_as": ("other",), "view_as": ("other",), "reshape_as": ("other",), "type_as": ("other",),
}
# The fills among them: op -> the value (a number, or the name of the parameter holding it).
FILLS = {"zeros_like": 0, "ones_like": 1, "full_like": "fill_value", "new_zeros": 0, "new_ones": 1,
         "new_full": "fill_value", "zero": 0, "fill": "value"}

# Parameter names whose tensors are weights, never graph inputs.
WEIGHT_SLOTS = frozenset({"weight", "bias", "running_mean", "running_var"})


def is_inplace_name(name):
    """``relu_``, ``add_``: a trailing underscore (but not a dunder or a private name) writes in place."""
    return name.endswith("_") and not name.endswith("__") and not name.startswith("_")
