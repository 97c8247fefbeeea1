"""Resampling: ``F.interpolate`` / ``nn.Upsample`` / ``F.upsample*`` / ``nn.Upsampling*2d``, every mode.

Each mode torch has is separable: out = A_h @ x @ A_w^T, one constant matrix per spatial axis. The
matrices are torch's own weights, read by running the op on one-hot rows (the other spatial axes
kept at size 1): they carry torch's index rules exactly - float32 source coordinates, ``1/scale_factor``
when a scale is passed and ``in/out`` when not (``recompute_scale_factor``), the identity torch uses for
an axis whose size does not change in bilinear and nearest (not in bicubic or nearest-exact), clamped
borders, antialias filters. Before they are used, the matrices are checked against the op itself on a
random input; an op that is not their product is refused. ``constructions.linear_map`` writes them; a
nearest resize by integer factors stays the one-layer Deconvolution it always was.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tracecap.mappers.caffe.constructions import linear_map
from tracecap.mappers.caffe.registry import register

_PROBE = 2  # size of the spatial axes a one-axis probe leaves alone
_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")


def _call_args(p, spatial, out_sizes, axis=None):
    """F.interpolate keyword arguments of the node, for all spatial axes or only ``axis`` (others kept
    at size 2 - not 1, where torch's antialias filter goes wrong)."""
    kwargs = {"mode": p["mode"]}
    if p["align_corners"] is not None:
        kwargs["align_corners"] = p["align_corners"]
    if p.get("antialias"):
        kwargs["antialias"] = True
    keep = [axis is None or k == axis for k in range(spatial)]
    if p["size"] is not None:
        kwargs["size"] = tuple(out_sizes[k] if keep[k] else _PROBE for k in range(spatial))
    else:
        scale = p["scale_factor"]
        scale = list(scale) if isinstance(scale, (list, tuple)) else [scale] * spatial
        kwargs["scale_factor"] = tuple(float(scale[k]) if keep[k] else 1.0 for k in range(spatial))
        if p["recompute_scale_factor"] is not None:
            kwargs["recompute_scale_factor"] = p["recompute_scale_factor"]
    return kwargs


def axis_matrices(p, in_shape, out_shape):
    """{axis: [out, in] float64 weights} of interpolate node params ``p``, read from torch itself: channel
    r of the probe is row r of the identity along the axis, constant along the others."""
    spatial = len(in_shape) - 2
    outs = list(out_shape[2:])
    mats = {}
    for k in range(spatial):
        n = in_shape[2 + k]
        view = (1, n) + tuple(n if j == k else 1 for j in range(spatial))
        basis = torch.eye(n, dtype=torch.float32).reshape(view).expand(
            (1, n) + tuple(n if j == k else _PROBE for j in range(spatial))).contiguous()
        with torch.no_grad():
            y = F.interpolate(basis, **_call_args(p, spatial, outs, axis=k))
        mats[2 + k] = y[(0, slice(None)) + tuple(slice(None) if j == k else 0 for j in range(spatial))].T.double().numpy()
    return mats


def _separable(p, in_shape, out_shape, mats, rows=64):
    """Does the product of ``mats`` reproduce the op on a random input (at up to ``rows`` output rows)?"""
    spatial = len(in_shape) - 2
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, 1) + tuple(in_shape[2:]), generator=gen)
    with torch.no_grad():
        want = F.interpolate(x, **_call_args(p, spatial, list(out_shape[2:]))).double().numpy()[0, 0]
    got = x.double().numpy()[0, 0]
    for k in range(spatial - 1, -1, -1):
        m = mats[2 + k]
        if k == 0 and m.shape[0] > rows:
            pick = np.linspace(0, m.shape[0] - 1, rows).astype(int)
            m, want = m[pick], want[pick]
        got = np.moveaxis(np.tensordot(m, got, axes=([1], [k])), 0, k)
    return np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def _integer_repeat(m):
    """k if ``m`` repeats each input k times in order (nearest by an integer factor), else None."""
    out, n = m.shape
    if out % n:
        return None
    k = out // n
    return k if np.array_equal(m, np.repeat(np.eye(n), k, axis=0)) else None


@register("interpolate")
def interpolate(node, ctx):
    p = node.params
    shape, out = ctx.in_shape(), ctx.out_shape()
    if p["mode"] not in _MODES:
        ctx.unsupported(f"interpolate(mode={p['mode']!r})")
    if len(shape) not in (3, 4, 5):
        ctx.unsupported(f"interpolate of a {len(shape)}-D tensor")
    x = ctx.bottom(p["input"])
    if 0 in out:
        ctx.unsupported(f"interpolate to the empty shape {out}")
    mats = axis_matrices(p, shape, out)
    if not _separable(p, shape, out, mats):
        ctx.unsupported(f"interpolate(mode={p['mode']!r}) here is not a product of one matrix per axis")
    if all(m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(len(m))) for m in mats.values()):
        return [ctx.layer("Reshape", [x], params={"shape": {"dim": list(out)}})]
    factors = [_integer_repeat(m) for m in mats.values()]
    if len(shape) == 4 and None not in factors:
        # nearest by integer factors: a depthwise Deconvolution with a kernel of ones, stride = kernel
        c, (fh, fw) = shape[1], factors
        kernel = {"kernel_size": [fh]} if fh == fw else {"kernel_h": fh, "kernel_w": fw}
        stride = {"stride": [fh]} if fh == fw else {"stride_h": fh, "stride_w": fw}
        params = {"num_output": c, "bias_term": False, **kernel, **stride, "group": c}
        return [ctx.layer("Deconvolution", [x], params=params, blobs=[np.ones((c, 1, fh, fw), np.float32)])]
    return linear_map(ctx, x, shape, mats, ctx.top)
