"""The Gemma 3 forward.

Differences from llama, each from llama.cpp's gemma3 graph: embeddings scaled by
sqrt(n_embd); RMS norms on q and k per head; a norm after attention and after the FFN
(the GGUF's norm weights already hold Gemma's 1 + w); GELU (tanh) gated FFN; NEOX rope;
sliding-window attention on local layers (rope base `rope_base_swa`) and full attention
with the global rope base on every `swa_pattern`-th layer; q scaled by 1/sqrt(head_dim);
tied output.
"""

from __future__ import annotations

import numpy as np

from .weights import Weights


def forward(cfg, w: Weights, ops, state, tokens: np.ndarray, all_logits: bool = False) -> np.ndarray:
    n, hd = len(tokens), cfg.head_dim
    pos = state.pos
    positions = np.arange(pos, pos + n)

    x = ops.scale(ops.embed(w.token_embd, tokens), cfg.embed_scale)  # (n, d)
    for L, b in enumerate(w.blocks):
        ops.layer = L
        local = cfg.is_local(L)
        base = cfg.rope_base_swa if local else cfg.rope_base
        # attention, with q/k norms and a post-attention norm
        h = ops.rms_norm(x, b.attn_norm, cfg.rms_eps)
        q = ops.matmul(h, b.attn_q).reshape(n, cfg.n_head, hd)
        k = ops.matmul(h, b.attn_k).reshape(n, cfg.n_head_kv, hd)
        v = ops.matmul(h, b.attn_v).reshape(n, cfg.n_head_kv, hd)
        q = ops.rope(ops.rms_norm(q, b.attn_q_norm, cfg.rms_eps), positions, base, cfg.rope_mode, cfg.rope_dim)
        k = ops.rope(ops.rms_norm(k, b.attn_k_norm, cfg.rms_eps), positions, base, cfg.rope_mode, cfg.rope_dim)
        a = ops.attention(q, k, v, state.kv, L, pos, cfg.attn_scale, cfg.sliding_window if local else None)
        x = ops.add(x, ops.rms_norm(ops.matmul(a, b.attn_output), b.post_attention_norm, cfg.rms_eps))
        # feed-forward (GeGLU), with a post-FFN norm
        h = ops.rms_norm(x, b.ffn_norm, cfg.rms_eps)
        f = ops.gelu_mul(ops.matmul(h, b.ffn_gate), ops.matmul(h, b.ffn_up))  # (n, n_ff)
        x = ops.add(x, ops.rms_norm(ops.matmul(f, b.ffn_down), b.post_ffw_norm, cfg.rms_eps))
    ops.layer = None

    if not all_logits:
        x = x[-1:]
    x = ops.rms_norm(x, w.output_norm, cfg.rms_eps)
    return ops.matmul(x, w.output)  # (1 or n, n_vocab)
