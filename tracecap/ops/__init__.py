"""Facts about torch ops, in one place: canonical names, argument signatures, categories, and
a reference executor that computes any op from its canonical name and params alone.

- ``names``       every spelling of an op -> one canonical name (``__iadd__`` -> ``add``)
- ``signatures``  bind a call's arguments to canonical parameter names
- ``categories``  the sets of ops that share a rule (identities, casts, metadata reads ...)
- ``reference``   execute a node from ``op`` + ``params`` (what mappers see), with torch
"""
from tracecap.ops.categories import (  # noqa: F401
    ALIAS_OPS, CAST_OPS, DEQUANTIZE_OPS, DROPOUT_OPS, ESCAPES, EXPAND_OPS, FILLS, IDENTITY_OPS, METADATA,
    QUANTIZE_OPS, RESHAPE_OPS, SHAPE_ONLY_ARGS, WEIGHT_SLOTS, is_inplace_name,
)
from tracecap.ops.names import canonical_name, qualified_name, raw_name  # noqa: F401
from tracecap.ops.signatures import SIGNATURES, BindError, bind, normalize  # noqa: F401
