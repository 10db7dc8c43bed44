"""A plain numpy forward pass of PaddleClas's Res2Net, straight from the spec with BatchNorm unfolded.

It shares nothing with the ONNX exporter but the block layout table, so it is an independent check of the
exported graph. It also fits BatchNorm statistics to real images (``fit_bn_statistics``): random weights
with fitted statistics give the realistic activation ranges that quantization tests need.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .zoo import BlockLayout, ConvUnit, ModelSpec, block_layouts, stem_units

BN_EPSILON = 1e-5


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """NCHW convolution, OIHW weights, symmetric zero padding, no bias."""
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # N,C,Ho,Wo,k,k
    return np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def max_pool_3x3_s2(x: np.ndarray) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))


def avg_pool_exclusive(x: np.ndarray, k: int, stride: int, pad: int, ceil_mode: bool) -> np.ndarray:
    """Average over in-bounds elements only (Paddle exclusive=True / ONNX count_include_pad=0)."""
    h, w = x.shape[2:]
    rnd = np.ceil if ceil_mode else np.floor
    ho, wo = (int(rnd((n + 2 * pad - k) / stride)) + 1 for n in (h, w))
    # Pad at the end as far as the last window reaches (ceil mode), and divide by the in-bounds count.
    eh, ew = max(0, (ho - 1) * stride + k - h - pad), max(0, (wo - 1) * stride + k - w - pad)
    widths = ((0, 0), (0, 0), (pad, eh), (pad, ew))
    sums = sliding_window_view(np.pad(x, widths), (k, k), axis=(2, 3))[:, :, ::stride, ::stride].sum(axis=(4, 5))
    ones = np.pad(np.ones((1, 1, h, w), x.dtype), widths)
    counts = sliding_window_view(ones, (k, k), axis=(2, 3))[:, :, ::stride, ::stride].sum(axis=(4, 5))
    return (sums / counts)[:, :, :ho, :wo]


class _Forward:
    def __init__(self, weights: dict[str, np.ndarray], dtype, fit: bool):
        self.w = weights
        self.dtype = dtype
        self.fit = fit  # when fitting, every BN takes its mean/variance from the activations it sees

    def conv_bn(self, x: np.ndarray, u: ConvUnit) -> np.ndarray:
        p = u.prefix
        y = conv2d(x, self.w[f"{p}._conv.weight"].astype(self.dtype), u.stride, (u.kernel - 1) // 2)
        if self.fit:
            self.w[f"{p}._batch_norm._mean"] = y.mean(axis=(0, 2, 3)).astype(np.float32)
            self.w[f"{p}._batch_norm._variance"] = y.var(axis=(0, 2, 3)).astype(np.float32)
        mean, var, gamma, beta = (
            self.w[f"{p}._batch_norm.{s}"].astype(self.dtype)[None, :, None, None]
            for s in ("_mean", "_variance", "weight", "bias")
        )
        y = gamma * (y - mean) / np.sqrt(var + BN_EPSILON) + beta
        return np.maximum(y, 0) if u.relu else y

    def block(self, x: np.ndarray, b: BlockLayout) -> np.ndarray:
        h = self.conv_bn(x, b.conv0)
        xs = [h[:, j * b.split : (j + 1) * b.split] for j in range(len(b.branches) + 1)]
        ys = []
        for j, u in enumerate(b.branches):
            inp = xs[j] if (j == 0 or b.stride == 2) else xs[j] + ys[-1]
            ys.append(self.conv_bn(inp, u))
        last = avg_pool_exclusive(xs[-1], 3, 2, 1, ceil_mode=False) if b.stride == 2 else xs[-1]
        out = self.conv_bn(np.concatenate(ys + [last], axis=1), b.conv2)
        if b.shortcut == "identity":
            sc = x
        elif b.shortcut == "pool_conv":
            sc = self.conv_bn(avg_pool_exclusive(x, 2, 2, 0, ceil_mode=True), b.short)
        else:
            sc = self.conv_bn(x, b.short)
        return np.maximum(sc + out, 0)

    def __call__(self, spec: ModelSpec, x: np.ndarray) -> np.ndarray:
        x = x.astype(self.dtype)
        for u in stem_units(spec):
            x = self.conv_bn(x, u)
        x = max_pool_3x3_s2(x)
        for b in block_layouts(spec):
            x = self.block(x, b)
        feat = x.mean(axis=(2, 3))
        return feat @ self.w["out.weight"].astype(self.dtype) + self.w["out.bias"].astype(self.dtype)


def forward(spec: ModelSpec, weights: dict[str, np.ndarray], x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Logits [N, num_classes] for an NCHW batch (any spatial size the network accepts)."""
    return _Forward(weights, dtype, fit=False)(spec, x)


def fit_bn_statistics(spec: ModelSpec, weights: dict[str, np.ndarray], images_nchw: np.ndarray,
                      dtype=np.float32) -> dict[str, np.ndarray]:
    """A copy of ``weights`` whose BN running mean/variance are the batch statistics of ``images_nchw``
    (preprocessed real images), layer by layer, so activations downstream are realistically scaled."""
    fitted = dict(weights)
    _Forward(fitted, dtype, fit=True)(spec, images_nchw)
    return fitted
