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
from numpy.lib.stride_tricks import as_strided

_ROWS = 16384    # rows of the saturation scan handled at a time (bounds its memory)

def exact_matmul(a, w, a_bound=255):
    """(M, K) x (N, K)^T in exact integers (int64), through BLAS: float32 when every partial sum
    stays below 2**24 (exactly representable), float64 otherwise. ``a_bound`` is max |a|
    (255 for codes and for codes minus a zero point; None scans ``a``)."""
    amax = a_bound if a_bound is not None else (int(np.abs(a).max()) if a.size else 0)
    wmax = int(np.abs(w).max()) if w.size else 0
    dtype = np.float32 if a.shape[1] * amax * wmax < 2 ** 24 else np.float64
    out = np.asarray(a, dtype=dtype) @ np.asarray(w, dtype=dtype).T
    return out.astype(np.int64)


def saturated_matmul(a, w):
    """Like ``exact_matmul`` but with every product pair (2m, 2m+1) saturated to int16 first
    (``a`` holds uint8 codes, as integers or exact float32)."""
    acc = exact_matmul(a, w, a_bound=255)
    even = a.shape[1] // 2 * 2       # an odd last index has no partner: 255 * 128 alone fits in int16
    reach = np.abs(w[:, :even]).max(0).astype(np.float32)   # per reduction index: the largest |weight|
    # |a0*w0 + a1*w1| <= (a0 + a1) * max(reach0, reach1) for codes a >= 0: only pairs whose code sum
    # passes 32767 / max reach can saturate (codes below 128 never do: 2 * 127 * 128 < 32768)
    limit = np.float32(32767) / np.maximum(np.maximum(reach[0::2], reach[1::2]), np.float32(1))
    for start in range(0, a.shape[0], _ROWS):
        sub = np.asarray(a[start:start + _ROWS], dtype=np.float32)
        cand, pair = np.nonzero(sub[:, 0:even:2] + sub[:, 1:even:2] > limit)
        if cand.size == 0:
            continue
        x0 = sub[cand, 2 * pair].astype(np.int32)[:, None]
        x1 = sub[cand, 2 * pair + 1].astype(np.int32)[:, None]
        p = x0 * w[:, 2 * pair].T.astype(np.int32) + x1 * w[:, 2 * pair + 1].T.astype(np.int32)   # (C, N)
        excess = p - np.clip(p, -32768, 32767)
        first = np.flatnonzero(np.r_[True, cand[1:] != cand[:-1]])                        # cand comes sorted
        acc[start + cand[first]] -= np.add.reduceat(excess, first, axis=0)
    return acc


def im2col(x, kernel, stride, padding, dilation, pad_value, dtype=None):
    """(N, C, H, W) codes -> (N*OH*OW, KH*KW*C) patches, reduction order (kh, kw, c), and (OH, OW).

    Padding takes ``pad_value`` (the input zero point: a padded code means real 0, as fbgemm's
    im2col and QNNPACK's indirection buffer both do).
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    dtype = dtype or x.dtype
    nhwc = np.full((n, h + 2 * ph, w + 2 * pw, c), pad_value, dtype=dtype)
    nhwc[:, ph:ph + h, pw:pw + w] = np.transpose(x, (0, 2, 3, 1))      # one converting copy, then plain ones
    oh = (h + 2 * ph - (kh - 1) * dh - 1) // sh + 1
    ow = (w + 2 * pw - (kw - 1) * dw - 1) // sw + 1
    sn, sy, sx, sc = nhwc.strides
    windows = as_strided(nhwc, (n, oh, ow, kh, kw, c), (sn, sy * sh, sx * sw, sy * dh, sx * dw, sc), writeable=False)
    return windows.reshape(n * oh * ow, kh * kw * c), oh, ow     # one copy, runs of kw * c values


def conv_weight_matrix(weight):
    """(O, I, KH, KW) -> (O, KH*KW*I): the same (kh, kw, c) reduction order as ``im2col``."""
    o = weight.shape[0]
    return np.ascontiguousarray(np.transpose(weight, (0, 2, 3, 1))).reshape(o, -1)
