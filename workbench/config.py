"""The blueprint: a frozen config per model, built from GGUF metadata (never from constants)."""

from __future__ import annotations

import math
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
        """The config from the file's metadata; a missing, mistyped or inconsistent value is a
        GGUFError naming the key (and the byte where its entry starts)."""

        def fail(key: str, problem: str):
            raise GGUFError(g.path, f"metadata {key!r}", g.key_offsets.get(key, 0), problem)

        arch = g.metadata.get("general.architecture")
        if arch is None or arch == "":
            fail("general.architecture", "is missing: the file does not say which model architecture it holds")
        if not isinstance(arch, str):
            fail("general.architecture", f"must be a string, found {arch!r}")
        if arch not in ROPE_MODES:
            fail("general.architecture", f"architecture {arch!r} is not supported "
                                         f"(known here: {', '.join(sorted(ROPE_MODES))})")

        def get(key, default=None, required=True):
            full = f"{arch}.{key}"
            if full in g.metadata:
                v = g.metadata[full]
                return v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v
            if required and default is None:
                fail(full, "required key is missing")
            return default

        def get_int(key, default=None, required=True, minimum=1):
            v = get(key, default, required)
            if v is None:
                return None
            if not isinstance(v, int) or isinstance(v, bool):
                fail(f"{arch}.{key}", f"must be an integer, found {v!r}")
            if v < minimum:
                fail(f"{arch}.{key}", f"must be >= {minimum}, found {v}")
            return v

        def get_float(key, default=None, required=True, positive=True):
            v = get(key, default, required)
            if v is None:
                return None
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                fail(f"{arch}.{key}", f"must be a finite number, found {v!r}")
            if positive and v <= 0:
                fail(f"{arch}.{key}", f"must be > 0, found {v}")
            return float(v)

        n_embd = get_int("embedding_length")
        n_head = get_int("attention.head_count")
        if f"{arch}.attention.key_length" not in g.metadata and n_embd % n_head:
            fail(f"{arch}.attention.head_count", f"{n_head} heads do not divide embedding_length {n_embd}")
        n_head_kv = get_int("attention.head_count_kv", n_head)
        if n_head % n_head_kv:
            fail(f"{arch}.attention.head_count_kv", f"{n_head_kv} does not divide the {n_head} query heads")
        head_dim = get_int("attention.key_length", n_embd // n_head)
        rope_dim = get_int("rope.dimension_count", head_dim, minimum=2)
        if rope_dim > head_dim or rope_dim % 2:
            fail(f"{arch}.rope.dimension_count", f"must be even and at most the head size {head_dim}, found {rope_dim}")
        emb = g.tensors.get("token_embd.weight")
        n_vocab = get_int("vocab_size", emb.rows if emb is not None else len(g.get("tokenizer.ggml.tokens", [])))
        extra = {k[len(arch) + 1:]: v for k, v in g.metadata.items() if k.startswith(arch + ".")}
        d = ARCH_DEFAULTS.get(arch, {})
        window = get_int("attention.sliding_window", required=False, minimum=0)
        return cls(
            arch=arch,
            n_layer=get_int("block_count"),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ff=get_int("feed_forward_length"),
            n_vocab=n_vocab,
            n_ctx_train=get_int("context_length"),
            rms_eps=get_float("attention.layer_norm_rms_epsilon"),
            rope_base=get_float("rope.freq_base", 10000.0),
            rope_dim=rope_dim,
            rope_mode=ROPE_MODES[arch],
            attn_scale=1.0 / float(head_dim) ** 0.5,
            sliding_window=window or None,
            swa_pattern=get_int("attention.sliding_window_pattern", d.get("swa_pattern", 0), required=False, minimum=0),
            rope_base_swa=get_float("rope.freq_base_swa", d.get("rope_base_swa", 0.0), required=False,
                                    positive=False) or None,
            embed_scale=float(n_embd) ** 0.5 if d.get("embed_scale") == "sqrt_n_embd" else 1.0,
            extra=extra,
        )
