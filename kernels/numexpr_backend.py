"""The numexpr backend: numpy's ops with their elementwise work done by numexpr.

numexpr evaluates an expression in one pass over cache-sized blocks, on several threads,
without the float32 temporaries numpy makes per operator. What it changes, and only that:

- the elementwise parts of rms_norm, rope, silu_mul, gelu_mul, add, scale and softmax;
- optionally (`dequant="numexpr"`), the last dequantization step (`q*d + m`, `(q - 8)*d`,
  `q*d`) of the 32-weight block types Q4_0, Q4_1, Q5_0 and Q8_0 inside the chunked matmul
  and embed (bit unpacking stays numpy, on uint8, one byte a weight). Off by default: on
  real SmolLM2 Q4_1 weights (a 227 x 576 band, one thread or two, min of 100 runs) it took
  330-550 us against the reference's 230-320 us; numexpr's per-block iteration over rows
  of 32 with a broadcast scale costs more than numpy's three vector passes. Measure again
  on another machine before switching it on.

Matmuls stay BLAS (`x @ w.T`); reductions (the mean square of rms_norm, softmax's max and
sum) stay numpy so they sum in the same order as the reference. With float32 constants
passed as float32 scalars, every op here is bit-identical to numpy except the ones that
call `exp`/`tanh` (silu_mul, gelu_mul, softmax), which differ by a few ulps.

Below `min_size` elements an op runs the numpy code instead: numexpr's fixed cost (parsing
the cached expression, waking threads) is ~10 us, more than numpy spends on a decode-sized
vector. `min_size=0` forces numexpr everywhere (the tests do).
"""

from __future__ import annotations

import numexpr as ne
import numpy as np

from .base import ROPE_NEOX, ROPE_NORM
from .numpy_backend import CHUNK_WEIGHTS, NumpyBackend
from .qtypes import _f16, _nibbles, dequantize
from .qtypes import _q5_high_bits as _q5_high

F32 = np.float32


# per type: (uint8 -> quants and scale fields, numexpr expression). Same arithmetic, in the
# same order, as kernels.qtypes, so the results are bit-identical.
def _q4_0(b):
    return dict(q=_nibbles(b[:, 2:18]), d=_f16(b, 0)), "(q - 8) * d"


def _q4_1(b):
    return dict(q=_nibbles(b[:, 4:20]), d=_f16(b, 0), m=_f16(b, 2)), "q * d + m"


def _q5_0(b):
    return dict(q=_nibbles(b[:, 6:22]) | _q5_high(b, 2), d=_f16(b, 0)), "(q - 16) * d"


def _q8_0(b):
    return dict(q=b[:, 2:34].view(np.int8), d=_f16(b, 0)), "q * d"


_BLOCK_DEQUANT = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q8_0": _q8_0}


class NumexprBackend(NumpyBackend):
    name = "numexpr"

    def __init__(self, weight_cache: str = "none", min_size: int = 8192, threads: int | None = None,
                 dequant: str = "numpy"):
        """min_size: smaller arrays take the numpy code; threads: numexpr's thread count (one
        pool per process, so this sets it process-wide; default: numexpr's own choice);
        dequant: "numpy" or "numexpr" for the last dequantization step (see the module doc)."""
        super().__init__(weight_cache)
        if dequant not in ("numpy", "numexpr"):
            raise ValueError(f"dequant must be 'numpy' or 'numexpr', not {dequant!r}")
        self.min_size = min_size
        self.dequant_with = dequant
        if threads is not None:
            ne.set_num_threads(threads)

    def _small(self, x) -> bool:
        return x.size < self.min_size

    # ---- dequantization ---------------------------------------------------------------

    def dequantize(self, raw: np.ndarray, qtype) -> np.ndarray:
        """kernels.qtypes.dequantize, with the final scale step through numexpr where the
        type has one here."""
        fn = _BLOCK_DEQUANT.get(qtype.name) if self.dequant_with == "numexpr" else None
        if fn is None or raw.size < self.min_size // 4:
            return dequantize(raw, qtype)
        lead = raw.shape[:-1]
        arrays, expr = fn(raw.reshape(-1, qtype.type_size))
        return ne.evaluate(expr, local_dict=arrays).reshape(*lead, -1)

    def embed(self, w, ids):
        cached = self._cache.get(id(w))
        if cached is not None:
            return cached[ids]
        return self.dequantize(w.data[ids], w.qtype)

    def matmul(self, x, w):
        if self.dequant_with != "numexpr" or id(w) in self._cache or w.qtype.name not in _BLOCK_DEQUANT:
            return super().matmul(x, w)
        out = np.empty((x.shape[0], w.rows), F32)
        step = max(16, CHUNK_WEIGHTS // w.cols)
        for r in range(0, w.rows, step):
            out[:, r : r + step] = x @ self.dequantize(w.data[r : r + step], w.qtype).T
        return out

    # ---- elementwise ops --------------------------------------------------------------

    def rms_norm(self, x, weight, eps):
        if self._small(x):
            return super().rms_norm(x, weight, eps)
        ms = np.mean(np.square(x, dtype=F32), axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(ms + eps)  # (n, 1), as numpy computes it
        return ne.evaluate("x * r * weight", local_dict=dict(x=x, r=r, weight=weight))

    def rope(self, x, pos, theta_base, mode, n_rot=None):
        if self._small(x):
            return super().rope(x, pos, theta_base, mode, n_rot)
        n, H, hd = x.shape
        n_rot = hd if n_rot is None else n_rot
        half = n_rot // 2
        inv = theta_base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
        ang = np.asarray(pos, np.float64)[:, None] * inv[None, :]
        c = np.cos(ang).astype(F32)[:, None, :]
        s = np.sin(ang).astype(F32)[:, None, :]
        out = x.copy() if n_rot < hd else np.empty_like(x)
        if mode == ROPE_NORM:
            i0, i1 = np.s_[..., 0:n_rot:2], np.s_[..., 1:n_rot:2]
        elif mode == ROPE_NEOX:
            i0, i1 = np.s_[..., :half], np.s_[..., half:n_rot]
        else:
            raise ValueError(f"unknown rope mode {mode!r}")
        env = dict(x0=x[i0], x1=x[i1], c=c, s=s)
        ne.evaluate("x0 * c - x1 * s", local_dict=env, out=out[i0])
        ne.evaluate("x0 * s + x1 * c", local_dict=env, out=out[i1])
        return out

    def softmax(self, x):
        if self._small(x):
            return super().softmax(x)
        m = x.max(axis=-1, keepdims=True)
        e = ne.evaluate("exp(x - m)")
        s = e.sum(axis=-1, keepdims=True)
        return ne.evaluate("e / s")

    def silu_mul(self, g, u):
        if self._small(g):
            return super().silu_mul(g, u)
        return ne.evaluate("g / (1 + exp(-g)) * u")

    def gelu_mul(self, g, u):
        if self._small(g):
            return super().gelu_mul(g, u)
        env = dict(g=g, u=u, h=F32(0.5), c=F32(np.sqrt(2.0 / np.pi)), a=F32(0.044715))
        return ne.evaluate("h * g * (1 + tanh(c * (g + a * g * g * g))) * u", local_dict=env)

    def add(self, a, b):
        if self._small(a):
            return super().add(a, b)
        return ne.evaluate("a + b")

    def scale(self, x, s):
        if self._small(x):
            return super().scale(x, s)
        return ne.evaluate("x * s", local_dict=dict(x=x, s=F32(s)))
