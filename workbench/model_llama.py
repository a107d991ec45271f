"""The llama family forward (llama, and by the same graph qwen2/qwen3-style models).

Reads like the paper: embed, then per layer pre-norm attention and pre-norm SwiGLU FFN
with residuals, then the final norm and the output projection. Names follow the GGUF
tensor names. Every computation goes through `ops`, which picks the backend and records.
"""

from __future__ import annotations

import numpy as np

from .weights import Weights


def forward(cfg, w: Weights, ops, state, tokens: np.ndarray, all_logits: bool = False) -> np.ndarray:
    """Run `tokens` (n,) at positions state.pos.. ; returns logits (1 or n, n_vocab)."""
    n, hd = len(tokens), cfg.head_dim
    pos = state.pos
    positions = np.arange(pos, pos + n)

    x = ops.embed(w.token_embd, tokens)  # (n, d)
    for L, b in enumerate(w.blocks):
        ops.layer = L
        # attention
        h = ops.rms_norm(x, b.attn_norm, cfg.rms_eps)
        q = ops.matmul(h, b.attn_q).reshape(n, cfg.n_head, hd)
        k = ops.matmul(h, b.attn_k).reshape(n, cfg.n_head_kv, hd)
        v = ops.matmul(h, b.attn_v).reshape(n, cfg.n_head_kv, hd)
        q = ops.rope(q, positions, cfg.rope_base, cfg.rope_mode, cfg.rope_dim)
        k = ops.rope(k, positions, cfg.rope_base, cfg.rope_mode, cfg.rope_dim)
        a = ops.attention(q, k, v, state.kv, L, pos, 1.0 / np.sqrt(hd))  # (n, H*hd)
        x = ops.add(x, ops.matmul(a, b.attn_output))
        # feed-forward (SwiGLU)
        h = ops.rms_norm(x, b.ffn_norm, cfg.rms_eps)
        f = ops.silu_mul(ops.matmul(h, b.ffn_gate), ops.matmul(h, b.ffn_up))  # (n, n_ff)
        x = ops.add(x, ops.matmul(f, b.ffn_down))
    ops.layer = None

    if not all_logits:
        x = x[-1:]
    x = ops.rms_norm(x, w.output_norm, cfg.rms_eps)
    return ops.matmul(x, w.output)  # (1 or n, n_vocab)
