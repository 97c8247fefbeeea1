"""Python 2-era syntax in a model file, rewritten when ``tracecap convert file.py:Class`` loads it under compat.

Two idioms that no longer compile but whose meaning is unambiguous:

* ``x.cuda(async=True)``: ``async`` is a reserved word since Python 3.7, and PyTorch 0.4 renamed the argument
  ``non_blocking``. Only ``async=`` as a keyword argument of a call is rewritten (``non_blocking=``); in a
  ``def`` it stays a SyntaxError.
* ``print`` statements: ``print x, y`` -> ``print(x, y)``, ``print x,`` -> ``print(x, end=" ")``,
  ``print >>f, x`` -> ``print(x, file=f)``. A ``print`` at the start of a statement followed by a name,
  number or string (or ``>>``) is one; a bare ``print`` (valid Python 3, a no-op) is left alone.

The file is read with ``tokenize`` (never a regex on raw text): strings and comments are never touched,
and every rewrite stays on its lines, so tracebacks and file:line in messages point at the original
source. Each rewrite is a CompatWarning naming its file:line. Other Python 2 syntax (``except E, e``,
backticks, ``0777``) stays a SyntaxError, reported as a CompatError with its file:line. Without compat
the file loads unchanged, and a SyntaxError one of these rewrites would fix says so. Files the model file
imports from its own folder are loaded the same way while it runs. Bytecode is never cached (it depends
on whether compat is active).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import io
import os
import sys
import tokenize
import warnings
from dataclasses import dataclass

from .compat import CompatError, CompatWarning, active

_SKIP = (tokenize.NL, tokenize.COMMENT)
_STATEMENT_START = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
# names after `print` that make a valid Python 3 expression with the function `print` (`print in x`)
_OPERATOR_WORDS = {"in", "is", "and", "or", "if", "else", "for", "as", "not"}


@dataclass(frozen=True)
class Rewrite:
    line: int
    what: str


def rewrite(source: str):
    """(new source, [Rewrite]) for the two idioms; the source unchanged when it cannot be tokenized."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in _SKIP]
    except (tokenize.TokenError, SyntaxError):
        return source, []
    lines = source.splitlines(keepends=True)
    edits, found = [], []   # edits: ((row, col), (row, col), text); rows 1-based as tokenize gives them
    brackets = []           # for each open bracket: True when it is a call's (not a def's or a class's)
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.type == tokenize.OP and tok.string in "([{":
            owner = tokens[i - 2].string if i >= 2 else ""
            brackets.append(tok.string == "(" and prev is not None and not
                            (prev.type == tokenize.NAME and owner in ("def", "class")))
        elif tok.type == tokenize.OP and tok.string in ")]}":
            if brackets:
                brackets.pop()
        elif tok.type == tokenize.NAME and tok.string == "async" and brackets and brackets[-1] and \
                prev.string in ("(", ",") and nxt is not None and nxt.type == tokenize.OP and nxt.string == "=":
            edits.append((tok.start, tok.end, "non_blocking"))
            found.append(Rewrite(tok.start[0], "`async=` keyword argument -> `non_blocking=`"))
        elif tok.type == tokenize.NAME and tok.string == "print" and not brackets and \
                (prev is None or prev.type in _STATEMENT_START or prev.string in (";", ":")):
            statement = _print_statement(tokens, i, lines)
            if statement is not None:
                edits.extend(statement)
                found.append(Rewrite(tok.start[0], "`print` statement -> print() call"))
    return _apply(lines, edits), found


def _print_statement(tokens, i, lines):
    """The edits turning the print statement at tokens[i] into a call, or None if it is not one."""
    first = tokens[i + 1] if i + 1 < len(tokens) else None
    if first is None or first.start[0] != tokens[i].end[0]:
        return None
    if first.type == tokenize.NAME:
        after = tokens[i + 2] if i + 2 < len(tokens) else None
        if first.string in _OPERATOR_WORDS and not (first.string == "not" and (after is None or after.string != "in")):
            return None
    elif not (first.type in (tokenize.NUMBER, tokenize.STRING) or first.string == ">>"):
        return None
    depth, end, commas = 0, i + 1, []
    while end < len(tokens):
        t = tokens[end]
        if t.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or (depth == 0 and t.string == ";"):
            break
        if t.type == tokenize.OP and t.string in "([{":
            depth += 1
        elif t.type == tokenize.OP and t.string in ")]}":
            depth -= 1
        elif depth == 0 and t.string == ",":
            commas.append(end)
        end += 1
    items = list(range(i + 1, end))  # token indexes of the statement after `print`
    edits, keywords = [], []
    if first.string == ">>":
        stop = commas[0] if commas else end
        if stop == i + 2 or tokens[i + 2].start[0] != tokens[stop - 1].end[0]:
            return None  # `print >>` alone, or a file expression over several lines
        row = tokens[i + 2].start[0]
        keywords.append("file=" + lines[row - 1][tokens[i + 2].start[1]:tokens[stop - 1].end[1]])
        removed_to = tokens[commas[0] + 1].start if commas and commas[0] + 1 < end else tokens[stop - 1].end
        if removed_to[0] != first.start[0]:
            return None  # the items start on another line: leave it to the SyntaxError
        edits.append((first.start, removed_to, ""))
        items = list(range(stop + 1, end)) if commas else []
        commas = commas[1:]
    last = tokens[items[-1]] if items else None
    if items and commas and commas[-1] == items[-1]:  # `print x,`: no newline
        keywords.insert(0, 'end=" "')
        edits.append((last.start, last.end, ", " + ", ".join(keywords) + ")"))
    else:
        tail = (", " if items and keywords else "") + ", ".join(keywords) + ")"
        anchor = last.end if last is not None else tokens[end - 1].end
        edits.append((anchor, anchor, tail))
    edits.append((tokens[i].start, tokens[i].end, "print("))
    return edits


def _apply(lines, edits):
    """Replace each (start, end, text) span - always within one line - by its text, the last first."""
    lines = list(lines)
    for (row, c0), (_, c1), text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        lines[row - 1] = lines[row - 1][:c0] + text + lines[row - 1][c1:]
    return "".join(lines)


class ModelFileLoader(importlib.machinery.SourceFileLoader):
    """Loads a model file named on the command line (rewritten under compat, see the module docstring)."""

    def source_to_code(self, data, path, *, _optimize=-1):
        text = importlib.util.decode_source(data)
        if active():
            text, rewrites = rewrite(text)
            for r in rewrites:
                warnings.warn_explicit(f"rewrote {r.what} at load (tracecap.legacy.compat)", CompatWarning,
                                       path, r.line)
            try:
                return compile(text, path, "exec", dont_inherit=True, optimize=_optimize)
            except SyntaxError as exc:
                raise CompatError(
                    f"{path}:{exc.lineno}: {exc.msg} - Python 2 syntax other than `print` statements and `async=` "
                    f"keyword arguments must be ported by hand") from None
        try:
            return compile(text, path, "exec", dont_inherit=True, optimize=_optimize)
        except SyntaxError as exc:
            rewrites = rewrite(text)[1]
            fixable = [r for r in rewrites if r.line == exc.lineno] or rewrites[:1]
            if not fixable:
                raise
            raise CompatError(
                f"{path}:{exc.lineno}: {exc.msg}: Python 2-era syntax ({fixable[0].what.split(' ->')[0]} at line "
                f"{fixable[0].line}); `tracecap convert --legacy 0.3` rewrites it when loading the file") from None

    def get_code(self, fullname):
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)  # never from or into __pycache__

    def exec_module(self, module):
        if not active():
            return super().exec_module(module)
        finder = _FolderFinder(os.path.dirname(os.path.abspath(self.path)))
        sys.meta_path.insert(0, finder)
        try:
            return super().exec_module(module)
        finally:
            sys.meta_path.remove(finder)


class _FolderFinder(importlib.abc.MetaPathFinder):
    """While a model file runs under compat: its own folder's Python files load with ModelFileLoader."""

    def __init__(self, folder):
        self.folder = os.path.realpath(folder) + os.sep

    def find_spec(self, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or type(spec.loader) is not importlib.machinery.SourceFileLoader or \
                not os.path.realpath(spec.origin).startswith(self.folder):
            return None
        spec.loader = ModelFileLoader(name, spec.origin)
        spec.cached = None
        return spec

