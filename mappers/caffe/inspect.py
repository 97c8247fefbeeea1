"""`tracecap inspect` for Caffe files: which dialect parses it, and its layers with blob shapes."""
from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from tracecap.errors import MappingError
from tracecap.mappers.caffe.proto import DIALECTS, module_for


def parse_any_dialect(path):
    """(NetParameter, dialect) for a .prototxt or .caffemodel; the first dialect that parses it wins."""
    path = Path(path)
    if not path.is_file():
        raise MappingError(f"{path}: no such file")
    binary = path.suffix == ".caffemodel"
    errors = {}
    for dialect in ("opencv", "bvlc") if not binary else ("opencv",):
        pb = module_for(dialect)
        try:
            if binary:
                return pb.NetParameter.FromString(path.read_bytes()), "any"
            return text_format.Parse(path.read_text(encoding="utf-8"), pb.NetParameter()), dialect
        except (text_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
            errors[dialect] = str(exc).splitlines()[0]
    raise MappingError(f"{path}: not a Caffe {'caffemodel' if binary else 'prototxt'} in any of "
                       f"{', '.join(DIALECTS)}: " + "; ".join(f"{d}: {e}" for d, e in errors.items()))


def inspect_caffe(path):
    """Describe a .prototxt (text) or .caffemodel (binary) file as a JSON-ready dict."""
    net, dialect = parse_any_dialect(path)
    binary = Path(path).suffix == ".caffemodel"
    layers = [{"name": l.name, "type": l.type, "bottoms": list(l.bottom), "tops": list(l.top),
               "blobs": [list(b.shape.dim) for b in l.blobs]} for l in net.layer]
    params = sum(_numel(b) for l in layers for b in l["blobs"])
    return {"file": str(path), "format": "caffemodel" if binary else "prototxt",
            "dialect": dialect, "name": net.name, "layers": layers, "parameters": params}


def _numel(dims):
    n = 1
    for d in dims:
        n *= d
    return n


def format_caffe(report):
    lines = [f"{report['file']}: {report['format']}, dialect {report['dialect']}, "
             f"{len(report['layers'])} layers, {report['parameters']:,} parameters"]
    rows = [("name", "type", "bottoms", "tops", "blobs")]
    for l in report["layers"]:
        rows.append((l["name"], l["type"], ",".join(l["bottoms"]), ",".join(l["tops"]),
                     " ".join("x".join(map(str, b)) for b in l["blobs"])))
    widths = [min(max(len(r[i]) for r in rows), 40) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
