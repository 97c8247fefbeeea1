"""Integer matrix products for the executor: exact int32 accumulation, im2col, and fbgemm's int16 pairs.

fbgemm's AVX2 kernel (``vpmaddubsw`` then ``vpmaddwd`` with ones) computes, for each pair of
reduction indices (2m, 2m+1), ``sat16(a[2m]*w[2m] + a[2m+1]*w[2m+1])`` and adds those in int32.
The reduction order is the packed one: for a linear layer the input features, for a convolution
(im2col, also 1x1, depthwise and grouped) kernel row, kernel column, input channel - channel
fastest - within each group. ``saturated_matmul`` computes the exact product with BLAS (float64
holds these integers exactly) and corrects only the (row, pair) cells that can saturate, so the
common case (reduce_range activations below 128) costs one matrix product.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_CHUNK = 1 << 22   # cells of (candidate pairs x output columns) corrected at a time


def exact_matmul(a, w):
    """(M, K) x (N, K)^T in exact integers (int64), through float64 BLAS."""
    return np.rint(np.asarray(a, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T).astype(np.int64)


def saturated_matmul(a, w):
    """Like ``exact_matmul`` but with every product pair (2m, 2m+1) saturated to int16 first."""
    a = np.asarray(a, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    acc = exact_matmul(a, w)
    k = a.shape[1]
    if k % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        w = np.pad(w, ((0, 0), (0, 1)))
        k += 1
    a0, a1 = a[:, 0::2], a[:, 1::2]                       # (M, K/2)
    w0, w1 = w[:, 0::2], w[:, 1::2]                       # (N, K/2)
    bound = np.abs(a0) * np.abs(w0).max(0) + np.abs(a1) * np.abs(w1).max(0)
    rows, pairs = np.nonzero(bound > 32767)
    if rows.size == 0:
        return acc
    step = max(1, _CHUNK // max(1, w.shape[0]))
    for start in range(0, rows.size, step):
        r, m = rows[start:start + step], pairs[start:start + step]
        p = a0[r, m][:, None] * w0[:, m].T + a1[r, m][:, None] * w1[:, m].T     # (C, N)
        corr = np.clip(p, -32768, 32767) - p
        np.add.at(acc, r, corr)
    return acc


def im2col(x, kernel, stride, padding, dilation, pad_value):
    """(N, C, H, W) codes -> (N*OH*OW, KH*KW*C) patches, reduction order (kh, kw, c), and (OH, OW).

    Padding takes ``pad_value`` (the input zero point: a padded code means real 0, as fbgemm's
    im2col and QNNPACK's indirection buffer both do).
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = sliding_window_view(x, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]   # N,C,OH,OW,KH,KW
    oh, ow = win.shape[2], win.shape[3]
    cols = np.ascontiguousarray(win.transpose(0, 2, 3, 4, 5, 1))                        # N,OH,OW,KH,KW,C
    return cols.reshape(n * oh * ow, kh * kw * c), oh, ow


def conv_weight_matrix(weight):
    """(O, I, KH, KW) -> (O, KH*KW*I): the same (kh, kw, c) reduction order as ``im2col``."""
    o = weight.shape[0]
    return np.ascontiguousarray(np.transpose(weight, (0, 2, 3, 1))).reshape(o, -1)
