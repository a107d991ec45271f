"""Weights as named views of the mapped file: the model's tensors, grouped per layer.

`Weights` holds the global tensors (token_embd, output_norm, output) and one `Block` per
layer whose attributes are the GGUF names without the `blk.N.` prefix and `.weight` suffix
(`attn_q`, `ffn_gate`, ...). Nothing is copied.
"""

from __future__ import annotations

from types import SimpleNamespace

from .gguf import GGUFError, GGUFFile
from .tensor import QTensor


class Block(SimpleNamespace):
    def tensors(self) -> list[QTensor]:
        return list(vars(self).values())


class Weights(SimpleNamespace):
    def tensors(self) -> list[QTensor]:
        out = [t for k, t in vars(self).items() if k != "blocks"]
        for b in self.blocks:
            out += b.tensors()
        # the tied output is token_embd itself: list each tensor once
        seen, unique = set(), []
        for t in out:
            if id(t) not in seen:
                seen.add(id(t))
                unique.append(t)
        return unique


def build_weights(g: GGUFFile, n_layer: int, block_names: list[str], optional: tuple[str, ...] = ()) -> Weights:
    """Collect the tensors a forward needs; a missing one is a clear GGUFError."""

    def need(name: str) -> QTensor:
        t = g.tensors.get(name)
        if t is None:
            raise GGUFError(g.path, f"tensor {name!r}", 0, "required by the architecture but not in the file")
        return t

    blocks = []
    for i in range(n_layer):
        parts = {n: need(f"blk.{i}.{n}.weight") for n in block_names}
        parts.update({n: g.tensors[f"blk.{i}.{n}.weight"] for n in optional if f"blk.{i}.{n}.weight" in g.tensors})
        blocks.append(Block(**parts))
    token_embd = need("token_embd.weight")
    output = g.tensors.get("output.weight", token_embd)  # tied when absent
    return Weights(token_embd=token_embd, output_norm=need("output_norm.weight"), output=output, blocks=blocks)


def check_shapes(g: GGUFFile, cfg, w: Weights) -> None:
    """Every tensor the forward reads has the shape the config implies (GGUF dims order: the
    row length first); the first that does not is a GGUFError naming both. Trailing 1s are
    ignored, as in llama.cpp (a (n,) and a (n, 1) tensor are the same)."""
    E, V, F, hd = cfg.n_embd, cfg.n_vocab, cfg.n_ff, cfg.head_dim
    q, kv = cfg.n_head * hd, cfg.n_head_kv * hd
    why = {E: "n_embd", V: "n_vocab", F: "n_ff", hd: "head_dim", q: "n_head*head_dim", kv: "n_head_kv*head_dim"}
    block = {"attn_norm": (E,), "attn_q": (E, q), "attn_k": (E, kv), "attn_v": (E, kv), "attn_output": (q, E),
             "ffn_norm": (E,), "ffn_gate": (E, F), "ffn_up": (E, F), "ffn_down": (F, E),
             "attn_q_norm": (hd,), "attn_k_norm": (hd,), "post_attention_norm": (E,), "post_ffw_norm": (E,)}

    def check(t: QTensor, expect: tuple[int, ...]) -> None:
        dims = tuple(t.dims)
        while len(dims) > len(expect) and dims[-1] == 1:
            dims = dims[:-1]
        if dims != expect:
            names = ", ".join(f"{why.get(d, '?')}={d}" for d in expect)
            raise GGUFError(g.path, f"tensor {t.name!r}", g.info_offsets.get(t.name, t.offset),
                            f"dims {tuple(t.dims)} do not match the config: expected {expect} ({names}; GGUF order, "
                            "row length first)")

    check(w.token_embd, (E, V))
    for b in w.blocks:
        for name, t in vars(b).items():
            if name in block:
                check(t, block[name])
    check(w.output_norm, (E,))
    check(w.output, (E, V))
