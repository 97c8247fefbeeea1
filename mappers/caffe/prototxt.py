"""The prototxt of a net: protobuf's text format, without blobs, printed fast.

``text_format.MessageToString`` is pure Python and prints every field of every layer on its own;
for a ResNet-50 that is most of the cost of writing the prototxt. The text of a layer is the text
of its fields one after the other (the format prints each field independently, in field-number
order), and nets repeat the same ``*_param`` messages over and over, so this module prints the
layers' string fields (name, type, bottoms, tops) itself, and every other field by
``text_format`` once per distinct value, keyed by the field and its deterministic serialization.
The result is byte for byte ``text_format.MessageToString`` of the net with its blobs left out.
"""
from __future__ import annotations

from google.protobuf import text_encoding, text_format
from google.protobuf.descriptor import FieldDescriptor

from tracecap.mappers.caffe.wire import LAYER_BLOBS, NET_LAYER, copy_field, is_repeated

_MESSAGE, _STRING = FieldDescriptor.CPPTYPE_MESSAGE, FieldDescriptor.TYPE_STRING


def prototxt_text(net) -> str:
    """``text_format.MessageToString`` of ``net`` with every layer's blobs left out."""
    low, high = type(net)(), type(net)()
    for fd, value in net.ListFields():
        if fd.is_extension:
            return _slow(net)
        if fd.number != NET_LAYER:
            copy_field(low if fd.number < NET_LAYER else high, fd, value)
    cache: dict = {}
    parts = [text_format.MessageToString(low)]
    for layer in net.layer:
        text = _layer_text(layer, cache)
        if text is None:
            return _slow(net)
        parts.append(text)
    parts.append(text_format.MessageToString(high))
    return "".join(parts)


def _layer_text(layer, cache):
    """``layer { ... }`` as text_format prints it inside a NetParameter; None for what it leaves to it."""
    out = ["layer {\n"]
    for fd, value in layer.ListFields():
        if fd.is_extension:
            return None
        if fd.number == LAYER_BLOBS:
            continue
        values = value if is_repeated(fd) else (value,)
        if fd.type == _STRING:
            for v in values:
                out.append(f'  {fd.name}: "{v if _plain(v) else text_encoding.CEscape(v.encode("utf-8"), False)}"\n')
        elif fd.cpp_type == _MESSAGE:
            for v in values:
                key = (fd.number, v.SerializeToString(deterministic=True))
                text = cache.get(key)
                if text is None:
                    text = cache[key] = f"  {fd.name} {{\n{text_format.MessageToString(v, indent=4)}  }}\n"
                out.append(text)
        else:  # enums, numbers, bools: rare in layers, printed by text_format itself
            alone = type(layer)()
            copy_field(alone, fd, value)
            out.append(text_format.MessageToString(alone, indent=2))
    out.append("}\n")
    return "".join(out)


def _plain(s: str) -> bool:
    """Does ``CEscape`` leave ``s`` as it is? Printable ASCII without quotes or backslashes (most names)."""
    return s.isascii() and s.isprintable() and '"' not in s and "'" not in s and "\\" not in s


def _slow(net) -> str:
    head = type(net)()
    for fd, value in net.ListFields():
        if fd.number != NET_LAYER:
            copy_field(head, fd, value)
    for layer in net.layer:
        stripped = head.layer.add()
        for fd, value in layer.ListFields():
            if fd.number != LAYER_BLOBS:
                copy_field(stripped, fd, value)
    return text_format.MessageToString(head)
