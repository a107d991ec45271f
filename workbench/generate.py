"""Generation: prompt processing in one batched pass, then one token at a time.

    for piece in stream(model, "Once upon a time", n=32): print(piece, end="")
    result = generate(model, "Once upon a time", n=32)   # text, ids, timings
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

from .chat import render_chat
from .model import ContextFull, Model, RunState
from .sampler import Sampler, SamplerSettings


@dataclass
class Generation:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    stop_reason: str = ""  # "eog", "length", "context"
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prompt_tps(self) -> float:
        return len(self.prompt_ids) / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        """Generated tokens per second, excluding the first token (it comes from the prompt pass)."""
        n = len(self.ids) - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds else 0.0

    def to_dict(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "ids": self.ids, "text": self.text, "stop_reason": self.stop_reason,
                "prompt_tokens": len(self.prompt_ids), "generated_tokens": len(self.ids),
                "prompt_seconds": self.prompt_seconds, "decode_seconds": self.decode_seconds,
                "prompt_tokens_per_s": self.prompt_tps, "decode_tokens_per_s": self.decode_tps}


def chat_prompt(model: Model, user_text: str, system: str | None = None) -> str:
    template = model.gguf.get("tokenizer.chat_template")
    if not template:
        raise ValueError(f"{model.path} has no chat template (tokenizer.chat_template)")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    tok = model.tokenizer
    return render_chat(template, messages, add_generation_prompt=True,
                       bos_token=tok.piece(tok.bos_id) if tok.bos_id is not None else "",
                       eos_token=tok.piece(tok.eos_id) if tok.eos_id is not None else "")


def stream_ids(model: Model, prompt_ids: list[int], n: int, sampler: Sampler | None = None,
               state: RunState | None = None, result: Generation | None = None,
               stop_at_eog: bool = True) -> Iterator[int]:
    """Yield up to `n` generated token ids; fills `result` (timings, stop reason) as it goes."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
    sampler = sampler or Sampler(SamplerSettings())
    state = state or model.new_state(len(prompt_ids) + n)
    result = result if result is not None else Generation(list(prompt_ids))
    eog = model.tokenizer.eog_ids
    history = list(prompt_ids)
    if n == 0:
        result.stop_reason = "length"
        return
    t0 = time.perf_counter()
    logits = model.forward(state, prompt_ids, phase="prefill")[-1]
    result.prompt_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    while True:
        tok = sampler(logits, history)
        history.append(tok)
        result.ids.append(tok)
        yield tok
        if stop_at_eog and tok in eog:
            result.stop_reason = "eog"
            break
        if len(result.ids) >= n:
            result.stop_reason = "length"
            break
        if state.pos >= state.n_ctx:
            result.stop_reason = "context"
            break
        logits = model.forward(state, [tok], phase="decode")[-1]
    result.decode_seconds = time.perf_counter() - t1


def stream(model: Model, prompt: str, n: int = 32, sampler: Sampler | None = None, chat: bool = False,
           result: Generation | None = None, **kw) -> Iterator[str]:
    """Yield text pieces as they are generated (incomplete UTF-8 held back)."""
    from .tokenizer import StreamDecoder

    text = chat_prompt(model, prompt) if chat else prompt
    ids = model.tokenizer.encode(text)
    result = result if result is not None else Generation(ids)
    dec = StreamDecoder(model.tokenizer)
    for tok in stream_ids(model, ids, n, sampler, result=result, **kw):
        piece = dec.push(tok)
        if piece:
            yield piece
    tail = dec.flush()
    if tail:
        yield tail
    result.text = model.tokenizer.decode(result.ids)


def generate(model: Model, prompt: str, n: int = 32, temperature: float = 0.0, seed: int | None = None,
             chat: bool = False, sampler: Sampler | None = None, on_text=None, **kw) -> Generation:
    """Generate up to `n` tokens after `prompt`; `on_text(piece)` is called as text streams."""
    sampler = sampler or Sampler(SamplerSettings(temperature=temperature, seed=seed))
    text = chat_prompt(model, prompt) if chat else prompt
    result = Generation(model.tokenizer.encode(text))
    for piece in stream(model, text, n, sampler, chat=False, result=result, **kw):
        if on_text:
            on_text(piece)
    return result


__all__ = ["Generation", "generate", "stream", "stream_ids", "chat_prompt", "ContextFull"]
