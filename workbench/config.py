"""The blueprint: a frozen config per model, built from GGUF metadata (never from constants)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernels.base import ROPE_NEOX, ROPE_NORM

from .gguf import GGUFError, GGUFFile

# llama.cpp's rope layout per architecture (llama_model_rope_type): NORM rotates adjacent
# pairs, NEOX the two halves of each head.
ROPE_MODES = {
    "llama": ROPE_NORM,
    "gemma3": ROPE_NEOX,
    "qwen2": ROPE_NEOX,
    "qwen3": ROPE_NEOX,
    "phi3": ROPE_NEOX,
}


# What llama.cpp assumes for an architecture when the GGUF does not say (llama-model.cpp,
# load_hparams). Metadata keys, where present, win: `{arch}.attention.sliding_window_pattern`
# and `{arch}.rope.freq_base_swa`.
ARCH_DEFAULTS = {
    "gemma3": {"swa_pattern": 6, "rope_base_swa": 10000.0, "embed_scale": "sqrt_n_embd"},
}


@dataclass(frozen=True)
class Config:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int  # key/value length per head
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    rope_dim: int
    rope_mode: str
    attn_scale: float = 0.0  # multiplies q.k; 1/sqrt(head_dim) unless the architecture says otherwise
    sliding_window: int | None = None  # local layers attend to this many positions
    swa_pattern: int = 0  # every swa_pattern-th layer (the last of each group) is global; 0 = none
    rope_base_swa: float | None = None  # rope base of the sliding-window layers
    embed_scale: float = 1.0  # token embeddings are multiplied by this
    extra: dict[str, Any] = field(default_factory=dict)  # all of the architecture's metadata

    def is_local(self, layer: int) -> bool:
        """True for a sliding-window layer (llama.cpp's set_swa_pattern: il % n < n - 1)."""
        return bool(self.sliding_window) and self.swa_pattern > 0 and layer % self.swa_pattern < self.swa_pattern - 1

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> "Config":
        arch = g.architecture
        if arch not in ROPE_MODES:
            raise GGUFError(g.path, "metadata 'general.architecture'", 0,
                            f"architecture {arch!r} has no rope layout here (known: {', '.join(sorted(ROPE_MODES))})")

        def get(key, default=None, required=True):
            full = f"{arch}.{key}"
            if full in g.metadata:
                v = g.metadata[full]
                return v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v
            if required and default is None:
                raise GGUFError(g.path, f"metadata {full!r}", 0, "required key is missing")
            return default

        n_embd = int(get("embedding_length"))
        n_head = int(get("attention.head_count"))
        head_dim = int(get("attention.key_length", n_embd // n_head))
        emb = g.tensors.get("token_embd.weight")
        n_vocab = int(get("vocab_size", emb.rows if emb is not None else len(g.get("tokenizer.ggml.tokens", []))))
        extra = {k[len(arch) + 1:]: v for k, v in g.metadata.items() if k.startswith(arch + ".")}
        d = ARCH_DEFAULTS.get(arch, {})
        window = get("attention.sliding_window", required=False)
        return cls(
            arch=arch,
            n_layer=int(get("block_count")),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int(get("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            n_ff=int(get("feed_forward_length")),
            n_vocab=n_vocab,
            n_ctx_train=int(get("context_length")),
            rms_eps=float(get("attention.layer_norm_rms_epsilon")),
            rope_base=float(get("rope.freq_base", 10000.0)),
            rope_dim=int(get("rope.dimension_count", head_dim)),
            rope_mode=ROPE_MODES[arch],
            attn_scale=1.0 / float(head_dim) ** 0.5,
            sliding_window=int(window) if window else None,
            swa_pattern=int(get("attention.sliding_window_pattern", d.get("swa_pattern", 0), required=False)),
            rope_base_swa=float(get("rope.freq_base_swa", d.get("rope_base_swa", 0.0), required=False)) or None,
            embed_scale=float(n_embd) ** 0.5 if d.get("embed_scale") == "sqrt_n_embd" else 1.0,
            extra=extra,
        )
