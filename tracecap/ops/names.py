"""Canonical op names: the one name every spelling of an op maps to.

The same operation reaches the recorder under many names: ``torch.add``,
``Tensor.add``, ``Tensor.__add__``, ``__iadd__``, ``add_``; ``F.relu`` and
``torch.relu_``; ``F.sigmoid`` arrives as ``Tensor.sigmoid``. Ops called through
``torch.ops`` carry a qualified name (``aten::relu``, ``quantized::linear``): the
``aten`` ones are the ordinary ops under another spelling, other namespaces keep
their qualified name so that ``quantized::conv2d`` never collapses into ``conv2d``.
"""
from __future__ import annotations

from tracecap.ops.categories import is_inplace_name

# other spellings -> (canonical name, operands swapped?)
_ALIASES = {
    "__add__": ("add", False), "__iadd__": ("add", False), "__radd__": ("add", False),
    "__sub__": ("sub", False), "__isub__": ("sub", False), "__rsub__": ("rsub", False),
    "subtract": ("sub", False),
    "__mul__": ("mul", False), "__imul__": ("mul", False), "__rmul__": ("mul", False), "multiply": ("mul", False),
    "__truediv__": ("div", False), "__itruediv__": ("div", False), "__rtruediv__": ("div", True),
    "__rdiv__": ("div", True),
    "__div__": ("div", False), "true_divide": ("div", False), "divide": ("div", False),
    "__matmul__": ("matmul", False), "__neg__": ("neg", False), "negative": ("neg", False),
    "__pow__": ("pow", False), "__ipow__": ("pow", False), "__rpow__": ("pow", True),
    "_threshold": ("threshold", False), "__getitem__": ("getitem", False), "__setitem__": ("setitem", False),
    "concat": ("cat", False), "concatenate": ("cat", False), "clip": ("clamp", False),
    "data": ("alias", False), "T": ("t", False), "swapaxes": ("transpose", False), "swapdims": ("transpose", False),
    "max_pool2d_with_indices": ("max_pool2d", False), "_max_pool2d": ("max_pool2d", False),
    "adaptive_max_pool2d_with_indices": ("adaptive_max_pool2d", False),
    "upsample": ("interpolate", False), "upsample_nearest": ("interpolate", False),
    "upsample_bilinear": ("interpolate", False), "hardsigmoid_": ("hardsigmoid", False),
    "broadcast_to": ("expand", False),
}



def qualified_name(func):
    """'quantized::linear' for an op of a non-aten ``torch.ops`` namespace, else None."""
    qual = getattr(func, "_qualified_op_name", None) or getattr(getattr(func, "overloadpacket", None),
                                                                "_qualified_op_name", None)
    if not isinstance(qual, str) or "::" not in qual or qual.startswith("aten::"):
        return None
    return qual


def raw_name(func):
    """The name an op was called by: 'conv2d', '__add__', 'relu_', or a property like 'data'."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # a tensor property read through its getset descriptor
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    return name


_CANONICAL = {}


def canonical_name(func):
    """Return (canonical op name, swapped operands?, written in place?); remembered per callable."""
    try:
        return _CANONICAL[func]
    except KeyError:
        found = _CANONICAL[func] = _canonical(func)
        return found
    except TypeError:  # an unhashable callable
        return _canonical(func)


def _canonical(func):
    qual = qualified_name(func)
    if qual is not None:
        return qual, False, False
    name = raw_name(func)
    if name in _ALIASES:
        op, swap = _ALIASES[name]
        return op, swap, name.startswith("__i")
    inplace = is_inplace_name(name)
    if inplace:
        name = name[:-1]
    op, swap = _ALIASES.get(name, (name, False))
    return op, swap, inplace
