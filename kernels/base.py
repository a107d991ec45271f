"""The backend contract: the small set of ops the forward uses.

Every backend subclasses `Backend` and implements some of these ops; `supports(op, qtype)`
says which. numpy (`kernels.numpy_backend`) implements all of them and is their living
definition; an op a backend does not support falls back to numpy, and the profile says so.

Shapes (n = tokens in the batch, d = model width, H/Hkv = query/KV heads, hd = head size):

    embed(w, ids)                      ids (n,) int            -> (n, d)      rows of w
    matmul(x, w)                       x (n, k), w (rows, k)   -> (n, rows)   x @ w.T
    rms_norm(x, weight, eps)           x (n, d), weight (d,)   -> (n, d)      x / rms(x) * weight
    rope(x, pos, theta_base, mode)     x (n, H, hd), pos (n,)  -> (n, H, hd)  rotary embedding
    attention(q, k, v, cache, layer, pos, scale, window)
                                       q (n, H, hd), k/v (n, Hkv, hd); stores k, v at
                                       positions pos.. of `cache`, attends causally over the
                                       cache (within `window` positions if given)
                                                               -> (n, H*hd)
    silu_mul(g, u)                     silu(g) * u                     (SwiGLU)
    gelu_mul(g, u)                     gelu_tanh(g) * u                (GeGLU)
    add(a, b)                          a + b
    scale(x, s)                        x * s
    softmax(x)                         softmax over the last axis

A weight `w` is any object with `.qtype` (kernels.qtypes.QType), `.rows`, `.cols` and
`.data` (uint8 raw blocks, shape (rows, row_bytes)). Activations are float32 numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPS = ("embed", "matmul", "rms_norm", "rope", "attention", "silu_mul", "gelu_mul", "add", "scale", "softmax")

# rope modes as llama.cpp names them: NORM rotates adjacent pairs (x[2i], x[2i+1]);
# NEOX rotates the two halves (x[i], x[i + hd/2]).
ROPE_NORM, ROPE_NEOX = "norm", "neox"


class BackendError(RuntimeError):
    """A backend that cannot run (no device, kernel build failure, out of device memory)."""


@dataclass
class KVCache:
    """Keys and values of every layer, position-major: k[layer] is (n_ctx, Hkv, hd)."""

    k: list
    v: list
    n_ctx: int


class Backend:
    name = "abstract"

    def supports(self, op: str, qtype=None) -> bool:
        """True if this backend implements `op` (for weight type `qtype`, where it has one)."""
        return False

    def new_kv_cache(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int) -> KVCache:
        shape = (n_ctx, n_head_kv, head_dim)
        return KVCache([np.zeros(shape, np.float32) for _ in range(n_layer)],
                       [np.zeros(shape, np.float32) for _ in range(n_layer)], n_ctx)

    def prepare(self, weights) -> None:
        """Called once with the weight tensors a model will use (upload, caches)."""

    def to_host(self, x):
        return x

    def resources(self) -> dict:
        """Counts of what this backend holds (device buffers, pool blocks): what a soak
        watches for leaks. Host memory is the process's RSS."""
        return {}

    def close(self) -> None:
        pass
