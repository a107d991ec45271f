"""A loaded model: blueprint (Config), weights (views of the mapped file), tokenizer, and
the ops that run it. Run state (KV cache, position) lives in `RunState`, one per sequence.

    m = workbench.load("smollm2")                 # registry name or a GGUF path
    state = m.new_state()
    logits = m.forward(state, m.tokenizer.encode("Hello"))
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kernels.base import Backend, BackendError, KVCache

from . import heap, model_gemma3, model_llama
from .backends import make_backend
from .config import Config
from .f32_store import for_model as f32_store_for
from .gguf import GGUFError, GGUFFile, open_gguf
from .models import resolve
from .ops import Ops
from .tokenizer import Tokenizer
from .weights import Weights, build_weights, check_shapes


@dataclass(frozen=True)
class Architecture:
    forward: Callable
    block_tensors: tuple[str, ...]
    optional_tensors: tuple[str, ...] = ()


LLAMA_BLOCK = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")

GEMMA3_BLOCK = LLAMA_BLOCK + ("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(model_llama.forward, LLAMA_BLOCK),
    "gemma3": Architecture(model_gemma3.forward, GEMMA3_BLOCK),
}


class ContextFull(RuntimeError):
    """The sequence reached the end of the KV cache."""


@dataclass
class RunState:
    kv: KVCache
    pos: int = 0
    # a decode step recorded on a device backend and replayed for later tokens (Model.forward)
    step: object = field(default=None, repr=False, compare=False)

    @property
    def n_ctx(self) -> int:
        return self.kv.n_ctx


@dataclass
class Model:
    path: str
    gguf: GGUFFile
    config: Config
    weights: Weights
    tokenizer: Tokenizer
    ops: Ops
    arch: Architecture
    load_seconds: dict = field(default_factory=dict)

    def new_state(self, n_ctx: int | None = None) -> RunState:
        n_ctx = min(n_ctx or 2048, self.config.n_ctx_train)
        c = self.config
        return RunState(self.ops.route("attention").new_kv_cache(c.n_layer, n_ctx, c.n_head_kv, c.head_dim))

    def forward(self, state: RunState, tokens, all_logits: bool = False, phase: str | None = None) -> np.ndarray:
        """Feed `tokens` at the state's position; returns float32 logits (1 or n, n_vocab).
        `phase` ("prefill" / "decode", default by batch size) labels the recorded events.
        On a backend that records steps (OpenCL), the first one-token step of a state is
        recorded as it runs and later ones replay it (StepGraph: the same kernels on the same
        buffers, so the same logits) unless a recorder is attached or an op runs elsewhere."""
        self.gguf.check_unchanged()  # a file truncated under the mapping: a clear error, not SIGBUS
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(tokens) == 0:
            raise ValueError("no tokens to run")
        if tokens.min() < 0 or tokens.max() >= self.config.n_vocab:
            bad = int(tokens[(tokens < 0) | (tokens >= self.config.n_vocab)][0])
            raise ValueError(f"token id {bad} is out of range 0..{self.config.n_vocab - 1}")
        if state.pos + len(tokens) > state.n_ctx:
            raise ContextFull(f"context full: {state.pos} + {len(tokens)} tokens exceed n_ctx {state.n_ctx}")
        self.ops.phase = phase or ("prefill" if len(tokens) > 1 else "decode")
        self.ops.pos = state.pos
        backend = self.ops.backend
        replayable = len(tokens) == 1 and not all_logits and self._replayable(state)
        if replayable and state.step is not None:  # the recorded decode step, for this token and position
            logits = state.step.replay(int(tokens[0]), state.pos)
            state.pos += 1
            return logits
        if replayable:  # this step is recorded as it runs
            backend.begin_capture()
        try:
            logits = self.arch.forward(self.config, self.weights, self.ops, state, tokens, all_logits)
            if replayable:  # kept only if every op of the step ran on this backend (no numpy fallback)
                step = backend.end_capture(logits, state.kv)
                state.step = step if self.ops.only_on(backend) else None
        finally:
            if replayable:
                backend.cancel_capture()  # (nothing left to do after end_capture)
        state.pos += len(tokens)
        return np.asarray(backend.to_host(logits), dtype=np.float32)

    def _replayable(self, state: RunState) -> bool:
        """Whether a decode step may be recorded and replayed: a backend that records steps
        (OpenCL, activations resident, launches fused), every op on it, no recorder, no
        fallback on errors (a replay bypasses ops), and the step (if any) made for this
        state's cache."""
        ops, backend = self.ops, self.ops.backend
        if ops.recorder is not None or ops.per_op or ops.fallback_on_error or ops.errors or \
                not getattr(backend, "can_capture", None) or not backend.can_capture():
            return False
        if state.step is not None and (state.step.kv is not state.kv or state.step.backend is not backend):
            state.step = None
        return True

    def close(self) -> None:
        self.ops.close()
        self.gguf.close()


def load(model: str | os.PathLike | GGUFFile, backend: str | Backend = "numpy", *, weight_cache: str = "none",
         per_op: dict[str, str | Backend] | None = None, device: str | None = None,
         advice: int | None = None, fallback: bool = False, f32_store: bool = True) -> Model:
    """Map a GGUF file (registry name or path) and get it ready to run on `backend`.

    per_op: backends for single ops, e.g. {"matmul": "opencl"}; advice: an mmap.MADV_*
    value applied to the mapping before the header is read; fallback: if a backend cannot
    start (no device, a kernel that does not build) or fails an op at run time (out of device
    memory, a rejected kernel), warn and use numpy instead - `model.ops.errors` and the
    profile's events (backend, fallback) show where. Off, such errors are raised.
    f32_store: keep numpy's float32 weight cache in a file and map it on later loads
    (workbench.f32_store; `WORKBENCH_F32_STORE=0` turns it off everywhere)."""
    t0 = time.perf_counter()
    heap.keep_freed_memory()  # a forward's temporaries reuse freed heap blocks (workbench.heap)
    if isinstance(model, GGUFFile):  # already opened, e.g. by a load strategy (workbench.loading)
        g, path = model, model.path
    else:
        path = str(resolve(model))
        g = open_gguf(path, advice=advice)
    t1 = time.perf_counter()
    try:
        cfg = Config.from_gguf(g)
        arch = ARCHITECTURES.get(cfg.arch)
        if arch is None:
            raise GGUFError(path, "metadata 'general.architecture'", 0,
                            f"architecture {cfg.arch!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})")
        weights = build_weights(g, cfg.n_layer, list(arch.block_tensors), arch.optional_tensors)
        check_shapes(g, cfg, weights)
        tok = Tokenizer.from_metadata(g.metadata)
        t2 = time.perf_counter()
        startup_errors = []

        def start(spec, **kw):
            try:
                return make_backend(spec, device=device, **kw)
            except BackendError as e:
                if not fallback:
                    raise
                startup_errors.append({"op": "*", "qtype": None, "backend": str(spec), "error": str(e)})
                warnings.warn(f"backend {spec} cannot start: {e}; using numpy", RuntimeWarning, stacklevel=3)
                return make_backend("numpy", weight_cache=weight_cache)

        be = start(backend, weight_cache=weight_cache)
        routes = {op: start(b) for op, b in (per_op or {}).items()}
        ops = Ops(be, routes, fallback_on_error=fallback)
        ops.errors += startup_errors
        if f32_store:
            for b in ops.backends:  # the numpy float32 cache: mapped from disk after the first load
                if getattr(b, "weight_cache", None) == "f32" and getattr(b, "store", False) is None:
                    b.store = f32_store_for(path)
        ops.prepare(weights.tensors())
        t3 = time.perf_counter()
    except BaseException:
        g.close()
        raise
    secs = {"map_and_parse": t1 - t0, "tokenizer_and_weights": t2 - t1, "backend_prepare": t3 - t2, "total": t3 - t0}
    return Model(path, g, cfg, weights, tok, ops, arch, secs)
