"""The numexpr backend: numpy's ops with their elementwise work done by numexpr.

numexpr evaluates an expression in one pass over cache-sized blocks, on several threads,
without the float32 temporaries numpy makes per operator. What it changes, and only that:

- the elementwise parts of rms_norm, rope, silu_mul, gelu_mul, add, scale and softmax, each
  an expression compiled once at import (`_Expr`);
- optionally (`dequant="numexpr"`), the last dequantization step (`q*d + m`, `(q - 8)*d`,
  `q*d`) of the 32-weight block types Q4_0, Q4_1, Q5_0 and Q8_0 inside the chunked matmul
  and embed (bit unpacking stays numpy, on uint8, one byte a weight). Off by default: on
  real SmolLM2 Q4_1 weights (a 227 x 576 band, one thread or two, min of 100 runs) it took
  330-550 us against the reference's 230-320 us; numexpr's per-block iteration over rows
  of 32 with a broadcast scale costs more than numpy's three vector passes. Measure again
  on another machine before switching it on.

Matmuls stay BLAS (`x @ w.T`); reductions (the mean square of rms_norm, softmax's max and
sum) stay numpy so they sum in the same order as the reference. With float32 constants
passed as float32 scalars, rms_norm, add and scale are bit-identical to numpy; rope
differs by an ulp (numpy's complex multiply rounds differently); silu_mul and softmax call
`exp` and differ by a few ulps; gelu_mul computes the same
function as g * sigmoid(2z) instead of g/2 (1 + tanh(z)) (see `_GELU_MUL`), which is also
more accurate where 1 + tanh(z) cancels (g < -3).

Which path runs: per op, arrays of fewer than `min_size[op]` elements take numpy's code
(`MIN_SIZE` holds the defaults, `uses_numexpr` answers, `workbench op-bench` shows both
paths). On this project's machine numexpr loses at every size the models use, so the
defaults send everything to numpy: the PyPI numexpr wheel (2.14, no VML) interprets each
operator as a scalar loop over 1024-element blocks (~0.3 ns an element an operator) and
calls libm's scalar expf (~2 ns) and tanhf (~29 ns) per element, where numpy 2.4 runs
AVX-512 loops (0.09 ns a multiply, 0.45 ns an exp, 0.38 ns a tanh); two cores, shared,
cannot make up a 3-10x gap, and a precompiled call still costs ~2.5 us against numpy's ~1
us. `min_size=0` forces numexpr everywhere (the tests do); on a machine with many cores or
a VML build of numexpr, measure with op-bench and pass the sizes that win there.
"""

from __future__ import annotations

import sys

import numexpr as ne
import numpy as np

from .base import ROPE_NEOX, ROPE_NORM
from .numpy_backend import CHUNK_WEIGHTS, NumpyBackend
from .qtypes import _f16, _nibbles, _q5_quants, dequantize

F32 = np.float32


# per type: (uint8 -> quants and scale fields, numexpr expression). Same arithmetic, in the
# same order, as kernels.qtypes, so the results are bit-identical.
def _q4_0(b):
    return dict(q=_nibbles(b[:, 2:18]), d=_f16(b, 0)), "(q - 8) * d"


def _q4_1(b):
    return dict(q=_nibbles(b[:, 4:20]), d=_f16(b, 0), m=_f16(b, 2)), "q * d + m"


def _q5_0(b):
    return dict(q=_q5_quants(b, 6, 2), d=_f16(b, 0)), "(q - 16) * d"


def _q8_0(b):
    return dict(q=b[:, 2:34].view(np.int8), d=_f16(b, 0)), "q * d"


_BLOCK_DEQUANT = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q8_0": _q8_0}


class _Expr:
    """A numexpr expression compiled once, for float32 inputs, at import. Calling it runs
    the compiled program directly: `ne.evaluate` re-derives the expression's names from
    the caller's frame and looks the program up in a cache on every call (~10 us against
    ~2.5 us here). Scalars must be float32 (np.float32 or 0-d arrays): a Python float
    would make numexpr compute in float64."""

    def __init__(self, text: str, *names: str):
        self.text = text
        self.program = ne.NumExpr(text, [(n, float) for n in names])  # numexpr's "float" is float32

    def __call__(self, *args, out=None):
        return self.program(*args, out=out, order="K", casting="safe", ex_uses_vml=ne.use_vml)


_RMS_NORM = _Expr("x * r * w", "x", "r", "w")  # r = 1/rms(x), from numpy (same reduction order)
_ROT_RE = _Expr("x0 * c - x1 * s", "x0", "x1", "c", "s")  # (x0 + i x1) (c + i s)
_ROT_IM = _Expr("x0 * s + x1 * c", "x0", "x1", "c", "s")
_EXP_SUB = _Expr("exp(x - m)", "x", "m")
_DIV = _Expr("e / s", "e", "s")
_SILU_MUL = _Expr("g / (1 + exp(-g)) * u", "g", "u")
# gelu_tanh(g) = g/2 (1 + tanh(z)) = g sigmoid(2z), z = sqrt(2/pi) (g + 0.044715 g^3): the
# same function without tanh, which numexpr takes from libm's scalar tanhf (29 ns an
# element here, against 2 ns for expf)
_GELU_MUL = _Expr("g * u / (1 + exp(k * (g + a * g * g * g)))", "g", "u", "k", "a")
_GELU_K, _GELU_A = F32(-2.0 * np.sqrt(2.0 / np.pi)), F32(0.044715)
_ADD = _Expr("a + b", "a", "b")
_SCALE = _Expr("x * s", "x", "s")
_NP = NumpyBackend

# Per op: arrays of fewer elements run numpy's code. From `workbench op-bench` with
# numexpr forced (2-core shared AMD EPYC, numexpr 2.14 with 1 and 2 threads, numpy 2.4):
# numexpr was slower at 1, 64, 256 and 1024 tokens (1.5 k to 1.6 M elements) for every op,
# so none of them reaches numexpr by default here (see the module doc).
NEVER = sys.maxsize
MIN_SIZE = {"rms_norm": NEVER, "rope": NEVER, "softmax": NEVER, "silu_mul": NEVER, "gelu_mul": NEVER,
            "add": NEVER, "scale": NEVER, "dequant": 2048}


class NumexprBackend(NumpyBackend):
    name = "numexpr"

    def __init__(self, weight_cache: str = "none", min_size=None, threads: int | None = None,
                 dequant: str = "numpy"):
        """min_size: per op, arrays with fewer elements take numpy's code; an int (the same
        for every op, 0 forces numexpr everywhere) or a dict {op: size} over MIN_SIZE
        (default: MIN_SIZE, measured on this project's machine). threads: numexpr's thread
        count (one pool per process, so this sets it process-wide; default: numexpr's own
        choice). dequant: "numpy" or "numexpr" for the last dequantization step (see the
        module doc)."""
        super().__init__(weight_cache)
        if dequant not in ("numpy", "numexpr"):
            raise ValueError(f"dequant must be 'numpy' or 'numexpr', not {dequant!r}")
        if min_size is None or isinstance(min_size, dict):
            unknown = set(min_size or {}) - set(MIN_SIZE)
            if unknown:
                raise ValueError(f"min_size for unknown op(s) {sorted(unknown)}; ops are {', '.join(MIN_SIZE)}")
            self.min_size = {**MIN_SIZE, **(min_size or {})}
        else:
            self.min_size = dict.fromkeys(MIN_SIZE, int(min_size))
        self.dequant_with = dequant
        self._cos_sin_of: tuple = (None, None, None)
        if threads is not None:
            ne.set_num_threads(threads)

    def uses_numexpr(self, op: str, size: int) -> bool:
        """True if `op` on an array of `size` elements runs numexpr (else numpy's code)."""
        return size >= self.min_size[op]

    # ---- dequantization ---------------------------------------------------------------

    def dequantize(self, raw: np.ndarray, qtype) -> np.ndarray:
        """kernels.qtypes.dequantize, with the final scale step through numexpr where the
        type has one here."""
        fn = _BLOCK_DEQUANT.get(qtype.name) if self.dequant_with == "numexpr" else None
        if fn is None or raw.size < self.min_size["dequant"]:
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
    # Each op checks its size first: below its threshold it runs numpy's code (the same
    # function numpy's backend runs, called directly: no extra Python frame).

    def rms_norm(self, x, weight, eps):
        if x.size < self.min_size["rms_norm"]:
            return _NP.rms_norm(self, x, weight, eps)
        ms = np.add.reduce(x * x, axis=-1, keepdims=True) / F32(x.shape[-1])
        r = 1.0 / np.sqrt(ms + eps)  # (n, 1), exactly as numpy computes it
        return _RMS_NORM(x, r, weight)

    def rope(self, x, pos, theta_base, mode, n_rot=None):
        if x.size < self.min_size["rope"]:
            return _NP.rope(self, x, pos, theta_base, mode, n_rot)
        n, H, hd = x.shape
        n_rot = hd if n_rot is None else n_rot
        half = n_rot // 2
        if mode == ROPE_NORM:
            i0, i1 = np.s_[..., 0:n_rot:2], np.s_[..., 1:n_rot:2]
        elif mode == ROPE_NEOX:
            i0, i1 = np.s_[..., :half], np.s_[..., half:n_rot]
        else:
            raise ValueError(f"unknown rope mode {mode!r}")
        c, s = self._cos_sin(np.asarray(pos), theta_base, n_rot)  # (n, 1, half) each
        out = x.copy() if n_rot < hd else np.empty_like(x)
        x0, x1 = x[i0], x[i1]
        _ROT_RE(x0, x1, c, s, out=out[i0])
        _ROT_IM(x0, x1, c, s, out=out[i1])
        return out

    def _cos_sin(self, pos, theta_base, n_rot):
        """cos and sin of numpy's cached rotation (the same float32 values), contiguous."""
        rot = self._rotation(pos, theta_base, n_rot)
        if self._cos_sin_of[0] is not rot:
            self._cos_sin_of = (rot, np.ascontiguousarray(rot.real), np.ascontiguousarray(rot.imag))
        return self._cos_sin_of[1:]

    def softmax(self, x, out=None):
        if x.size < self.min_size["softmax"]:
            return _NP.softmax(self, x, out)
        e = _EXP_SUB(x, x.max(axis=-1, keepdims=True), out=out)
        return _DIV(e, e.sum(axis=-1, keepdims=True), out=e)

    def silu_mul(self, g, u):
        if g.size < self.min_size["silu_mul"]:
            return _NP.silu_mul(self, g, u)
        return _SILU_MUL(g, u)

    def gelu_mul(self, g, u):
        if g.size < self.min_size["gelu_mul"]:
            return _NP.gelu_mul(self, g, u)
        return _GELU_MUL(g, u, _GELU_K, _GELU_A)

    def add(self, a, b):
        if a.size < self.min_size["add"]:
            return _NP.add(self, a, b)
        return _ADD(a, b)

    def scale(self, x, s):
        if x.size < self.min_size["scale"]:
            return _NP.scale(self, x, s)
        return _SCALE(x, F32(s))
