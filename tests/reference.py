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
        f = {k: r.fields[k] for k in r.fields}

        def val(k):
            fld = f[k]
            return fld.parts[fld.data[0]][0].item()

        self.n_layer = val("llama.block_count")
        self.d = val("llama.embedding_length")
        self.H = val("llama.attention.head_count")
        self.Hkv = val("llama.attention.head_count_kv")
        self.eps = val("llama.attention.layer_norm_rms_epsilon")
        self.base = val("llama.rope.freq_base")
        self.hd = self.d // self.H
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
