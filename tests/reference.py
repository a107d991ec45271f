"""An independent f32 reference forward for llama-family GGUF files.

It shares no code with the workbench: gguf-py's GGUFReader maps the file and
`gguf.quants.dequantize` turns every weight into float32; the forward below is a plain
transcription of the llama graph (RMSNorm, NORM-mode RoPE, GQA causal attention, SwiGLU).
"""

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class ReferenceLlama:
    def __init__(self, path):
        r = GGUFReader(str(path))

        def val(k, default=None):
            fld = r.fields.get(k)
            if fld is None:
                return default
            part = fld.parts[fld.data[0]]
            return bytes(part).decode() if fld.types[0].name == "STRING" else part[0].item()

        a = val("general.architecture")
        self.n_layer = val(f"{a}.block_count")
        self.d = val(f"{a}.embedding_length")
        self.H = val(f"{a}.attention.head_count")
        self.Hkv = val(f"{a}.attention.head_count_kv")
        self.eps = val(f"{a}.attention.layer_norm_rms_epsilon")
        self.base = val(f"{a}.rope.freq_base")
        self.hd = val(f"{a}.attention.key_length", self.d // self.H)
        self.w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float32)
            shape = [int(x) for x in reversed(t.shape.tolist())]  # numpy order
            self.w[t.name] = a.reshape(shape)
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]

    def norm(self, x, w):
        return x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):  # x (n, heads, hd); NORM mode: rotate pairs (2i, 2i+1)
        out = x.astype(np.float64).copy()
        for i in range(self.hd // 2):
            theta = pos * self.base ** (-2.0 * i / self.hd)
            c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
            a, b = x[:, :, 2 * i], x[:, :, 2 * i + 1]
            out[:, :, 2 * i] = a * c - b * s
            out[:, :, 2 * i + 1] = a * s + b * c
        return out

    def logits(self, ids):
        """Logits at every position of `ids`, float64 (n, vocab)."""
        w, n = self.w, len(ids)
        pos = np.arange(n, dtype=np.float64)
        x = w["token_embd.weight"][ids].astype(np.float64)
        for L in range(self.n_layer):
            p = f"blk.{L}."
            h = self.norm(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(n, self.H, self.hd)
            k = (h @ w[p + "attn_k.weight"].T).reshape(n, self.Hkv, self.hd)
            v = (h @ w[p + "attn_v.weight"].T).reshape(n, self.Hkv, self.hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            out = np.zeros((n, self.H, self.hd))
            for hh in range(self.H):
                kv = hh // (self.H // self.Hkv)
                s = q[:, hh] @ k[:, kv].T / np.sqrt(self.hd)
                s[np.triu_indices(n, 1)] = -np.inf
                p_ = np.exp(s - s.max(axis=1, keepdims=True))
                p_ /= p_.sum(axis=1, keepdims=True)
                out[:, hh] = p_ @ v[:, kv]
            x = x + out.reshape(n, -1) @ w[p + "attn_output.weight"].T
            h = self.norm(x, w[p + "ffn_norm.weight"])
            g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
        return self.norm(x, w["output_norm.weight"]) @ w["output.weight"].T


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl(p_logits, q_logits) -> float:
    """KL(p || q) of the softmaxes, in nats."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(axis=-1).max())


def top(z, k=10):
    return set(np.argsort(-np.asarray(z))[:k].tolist())


class ReferenceGemma3(ReferenceLlama):
    """Gemma 3, transcribed from llama.cpp's gemma3 graph: sqrt(d)-scaled embeddings, q/k
    RMS norms, post-attention and post-FFN norms, GELU(tanh)-gated FFN, NEOX rope with base
    10000 on sliding-window layers (every 6th layer global, base from the file), q scaled by
    1/sqrt(head_dim). Sliding windows are not applied: use prompts shorter than the window."""

    def rope_neox(self, x, pos, base):
        half = self.hd // 2
        inv = base ** (-np.arange(half) * 2.0 / self.hd)
        ang = pos[:, None, None] * inv[None, None, :]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)], axis=-1)

    def logits(self, ids):
        w, n = self.w, len(ids)
        pos = np.arange(n, dtype=np.float64)
        x = w["token_embd.weight"][ids].astype(np.float64) * np.sqrt(self.d)
        for L in range(self.n_layer):
            p = f"blk.{L}."
            base = self.base if L % 6 == 5 else 10000.0
            h = self.norm(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(n, self.H, self.hd)
            k = (h @ w[p + "attn_k.weight"].T).reshape(n, self.Hkv, self.hd)
            v = (h @ w[p + "attn_v.weight"].T).reshape(n, self.Hkv, self.hd)
            q = self.rope_neox(self.norm(q, w[p + "attn_q_norm.weight"]), pos, base) / np.sqrt(self.hd)
            k = self.rope_neox(self.norm(k, w[p + "attn_k_norm.weight"]), pos, base)
            out = np.zeros((n, self.H, self.hd))
            for hh in range(self.H):
                kv = hh // (self.H // self.Hkv)
                s = q[:, hh] @ k[:, kv].T
                s[np.triu_indices(n, 1)] = -np.inf
                p_ = np.exp(s - s.max(axis=1, keepdims=True))
                p_ /= p_.sum(axis=1, keepdims=True)
                out[:, hh] = p_ @ v[:, kv]
            a = out.reshape(n, -1) @ w[p + "attn_output.weight"].T
            x = x + self.norm(a, w[p + "post_attention_norm.weight"])
            h = self.norm(x, w[p + "ffn_norm.weight"])
            g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
            gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
            x = x + self.norm((gelu * u) @ w[p + "ffn_down.weight"].T, w[p + "post_ffw_norm.weight"])
        return self.norm(x, w["output_norm.weight"]) @ w["output.weight"].T
