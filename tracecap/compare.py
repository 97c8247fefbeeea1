"""The one rule for "do two outputs agree", used by convert --verify, verify and the tests.

A result agrees with its reference when the max abs difference is at most
``rel_tol x max(1, max|ref|)``: absolute near zero, relative for large activations.
Whole models use ``MODEL_TOLERANCE``; single ops, whose error has not accumulated, use
``OP_TOLERANCE``.
"""
from __future__ import annotations

import math

import numpy as np

MODEL_TOLERANCE = 1e-4
OP_TOLERANCE = 1e-5


def scale_of(ref):
    """max(1, max|ref|): what the tolerance is relative to."""
    ref = np.asarray(ref)
    return max(1.0, float(np.abs(ref).max())) if ref.size else 1.0


def max_abs_diff(got, ref):
    got, ref = np.asarray(got), np.asarray(ref)
    return float(np.abs(got.reshape(ref.shape) - ref).max()) if ref.size else 0.0


def within_tolerance(got, ref, rel_tol=MODEL_TOLERANCE):
    """(max abs diff, diff <= rel_tol x max(1, max|ref|))."""
    diff = max_abs_diff(got, ref)
    return diff, diff <= rel_tol * scale_of(ref)


def _dot(u, v):
    """float64 sum of u * v without BLAS: numpy's BLAS threads spin against other work on a shared
    machine (a 0.8M-element dot measured 16x slower than one thread); einsum's own loop does not."""
    return float(np.einsum("i,i->", u, v, dtype=np.float64))


def stats(got, ref):
    """Max abs diff, that diff relative to max(1, max|ref|), and cosine similarity (1.0 when both are zero)."""
    got = np.asarray(got).reshape(-1)
    ref = np.asarray(ref).reshape(-1)
    diff = max_abs_diff(got, ref)
    norm = math.sqrt(_dot(got, got) * _dot(ref, ref))
    cosine = _dot(got, ref) / norm if norm else (1.0 if not got.any() and not ref.any() else 0.0)
    return {"max_abs_diff": diff, "relative_diff": diff / scale_of(ref), "cosine": cosine}
