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
