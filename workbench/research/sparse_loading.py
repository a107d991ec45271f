"""Sparse-loading simulator, in the spirit of LLM in a Flash, Deja Vu and PowerInfer.

If FFN neuron j is skipped for a token, its row of ffn_gate, its row of ffn_up and its column
of ffn_down need not be read. This module answers, for a selection policy: what does skipping
cost in quality, and how much I/O does it save, counted honestly?

Quality: the skipped neurons' activations are set to 0 before ffn_down (a zero times its
column adds exactly nothing, so this equals removing their contribution); the logits are
compared with the dense model's (KL of the softmax and top-1 agreement per position, teacher
forced on one token sequence, and greedy continuations side by side).

I/O, per token and layer, two layouts:

- "gguf", the real file: a skipped neuron saves one row of ffn_gate and one of ffn_up
  (row_bytes each). ffn_down is stored row-major, rows = n_embd, cols = n_ff, so a neuron is
  a strided column, and in a quantized type a column's bytes share each block of `block_size`
  weights (32 for Q4_0/Q4_1/Q8_0, 256 for K types) with its neighbours: a column block can
  be skipped only when every neuron in it is skipped. Bytes are counted at block granularity,
  and as the file's PAGES (absolute page ids from the tensors' file offsets; a Q4_1 row of 576
  weights is 360 bytes, so eleven rows share a 4 KiB page).
- "bundle", the row-column bundling of LLM in a Flash: the file re-laid-out so that neuron j's
  gate row, up row and down column (re-quantized as a row of n_embd weights) sit together;
  one bundle per neuron, bundles back to back in a page-aligned region per layer.

Both are reported as "read" (the neurons used by this token: what a bandwidth-bound kernel
reads) and "new" (used now but not by the previous token of the sequence: what must come
from storage if the previous token's set stays in memory).

Policies (the oracle knows each token's true activation, as a perfect predictor would):

    Dense()                          every neuron (the reference)
    Threshold(t)                     skip neurons with |a| < t (Deja Vu / PowerInfer, oracle)
    Window(k, t)                     use the neurons active (|a| >= t) in the previous k tokens
                                     of the sequence, zero the others (LLM in a Flash's window,
                                     lagging one token behind a perfect predictor); the first
                                     token of a sequence has no history and runs dense.
                                     predict_current=True adds this token's active set too.

    ref = dense_reference(model, "The capital of France is", n_steps=8)
    res = simulate(model, Threshold(0.02), ref)
    res.summary()          # KL, top-1, greedy agreement, bytes and pages vs dense
    sweep(model, prompt, [Threshold(t) for t in (0.005, 0.01, 0.02)])

Runs on the numpy backend (the hook hands numpy arrays to ffn_down).
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..instrument.residency import PAGE, rows_to_pages
from .activations import _host, ffn_hook, stack_calls

# ---- policies ------------------------------------------------------------------------------


class Policy:
    """Chooses, per layer and token, which FFN neurons are used (loaded); the rest are zeroed."""

    name = "policy"

    def reset(self) -> None:
        """Forget history: called at the start of every simulated sequence."""

    def select(self, layer: int, a: np.ndarray) -> np.ndarray:
        """bool (n, n_ff): neurons used for each of the n tokens (rows of `a`, in order)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Dense(Policy):
    name = "dense"

    def select(self, layer, a):
        return np.ones(a.shape, bool)


@dataclass(repr=False)
class Threshold(Policy):
    """Skip neurons whose true activation has |a| < t (t = 0 skips nothing)."""

    t: float

    @property
    def name(self) -> str:
        return f"threshold(t={self.t:g})"

    def select(self, layer, a):
        return np.abs(a) >= self.t


@dataclass(repr=False)
class Window(Policy):
    """Use the neurons that were active (|a| >= t) in any of the previous k tokens of the
    sequence; the first token runs dense. `predict_current` also uses this token's own
    active set (a perfect predictor plus the window as a cache)."""

    k: int
    t: float
    predict_current: bool = False
    _hist: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"window k must be >= 1, not {self.k}")

    @property
    def name(self) -> str:
        return f"window(k={self.k}, t={self.t:g}{', +current' if self.predict_current else ''})"

    def reset(self):
        self._hist = {}

    def select(self, layer, a):
        hist = self._hist.setdefault(layer, deque(maxlen=self.k))
        out = np.empty(a.shape, bool)
        for i, row in enumerate(a):
            active = np.abs(row) >= self.t
            if not hist:
                out[i] = True
            else:
                out[i] = np.logical_or.reduce(list(hist))
                if self.predict_current:
                    out[i] |= active
            hist.append(active)
        return out


# ---- the intervention -------------------------------------------------------------------------


class SparseFFN:
    """The hook `sparse_ffn` installs: zero the unused neurons, remember which were used."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.calls: list[tuple[int, int, np.ndarray]] = []  # (layer, first position, used (n, n_ff))
        self.skipped = 0

    def __call__(self, kind, ops, g, u, f):
        a = _host(ops, kind, f)
        used = np.asarray(self.policy.select(ops.layer, a), bool)
        if used.shape != a.shape:
            raise ValueError(f"{self.policy.name} selected {used.shape} for activations {a.shape}")
        self.calls.append((ops.layer, ops.pos, used))
        if used.all():
            return f  # nothing skipped: the forward continues bit for bit as the dense model
        self.skipped += int((~used).sum())
        return np.where(used, a, np.float32(0))

    def used(self) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """(layers, used (n_layer, n_tokens, n_ff), sequence index, position)."""
        return stack_calls(self.calls)


@contextlib.contextmanager
def sparse_ffn(model, policy: Policy) -> Iterator[SparseFFN]:
    """Run the block's forward passes with `policy` choosing each FFN's neurons (the policy's
    history is reset first). The model's code and ops are restored on exit."""
    policy.reset()
    hook = SparseFFN(policy)
    with ffn_hook(model.ops, hook):
        yield hook


# ---- I/O accounting -------------------------------------------------------------------------------


def _pages(offset: int, row_bytes: int, rows, n_rows: int) -> np.ndarray:
    """Absolute file page ids holding any byte of the given rows (None = all) of a tensor at
    `offset` (rows_to_pages in the tensor's own page frame)."""
    base = offset // PAGE
    local = offset - base * PAGE
    n_local = -(-(local + n_rows * row_bytes) // PAGE)
    return base + np.flatnonzero(rows_to_pages(local, row_bytes, rows, n_rows, n_local))


@dataclass
class FFNGeometry:
    """Where one layer's FFN lives in the file, and the bundle layout's sizes."""

    layer: int
    gate: object  # QTensor (rows = n_ff)
    up: object  # QTensor (rows = n_ff)
    down: object  # QTensor (rows = n_embd, cols = n_ff)

    @classmethod
    def of(cls, model, layer: int) -> "FFNGeometry":
        b = model.weights.blocks[layer]
        g = cls(layer, b.ffn_gate, b.ffn_up, b.ffn_down)
        if not (g.gate.rows == g.up.rows == g.down.cols):
            raise ValueError(f"layer {layer}: ffn_gate/ffn_up rows and ffn_down cols differ")
        return g

    @property
    def n_ff(self) -> int:
        return self.down.cols

    @property
    def col_block(self) -> int:
        """Neurons per ffn_down block (columns that share each block of every row)."""
        return self.down.qtype.block_size

    @property
    def down_col_bytes(self) -> int:
        """Bytes of one neuron's ffn_down column re-quantized as a row of n_embd weights (the
        bundle layout); a partial last block is padded to a whole one."""
        q = self.down.qtype
        return -(-self.down.rows // q.block_size) * q.type_size

    @property
    def bundle_bytes(self) -> int:
        return self.gate.row_bytes + self.up.row_bytes + self.down_col_bytes

    def needed_col_blocks(self, used: np.ndarray) -> np.ndarray:
        """bool (n_ff / block_size,): ffn_down column blocks holding any used neuron."""
        bs = self.col_block
        pad = -self.n_ff % bs
        u = np.concatenate([used, np.zeros(pad, bool)]) if pad else used
        return u.reshape(-1, bs).any(axis=1)

    def down_pages(self, blocks: np.ndarray) -> np.ndarray:
        """Absolute file pages holding the needed column blocks of every ffn_down row."""
        d = self.down
        if blocks.all():
            return _pages(d.offset, d.row_bytes, None, d.rows)
        cb = np.flatnonzero(blocks)
        if len(cb) == 0:
            return np.zeros(0, np.int64)
        ts = d.qtype.type_size
        starts = d.offset + np.arange(d.rows, dtype=np.int64)[:, None] * d.row_bytes + cb[None, :] * ts
        first, last = starts // PAGE, (starts + ts - 1) // PAGE  # a block is at most one page
        return np.unique(np.concatenate([first.ravel(), last.ravel()]))

    def account(self, used: np.ndarray) -> dict:
        """Bytes and pages one token reads from this layer's FFN when `used` (bool (n_ff,))
        neurons are loaded: logical bytes per tensor (ffn_down at block granularity), the
        set of file pages ("gguf_pages"), and the bundle layout's bytes and pages."""
        used = np.asarray(used, bool)
        rows = np.flatnonzero(used)
        blocks = self.needed_col_blocks(used)
        all_rows = None if len(rows) == self.n_ff else rows
        gguf_pages = np.union1d(np.union1d(_pages(self.gate.offset, self.gate.row_bytes, all_rows, self.gate.rows),
                                           _pages(self.up.offset, self.up.row_bytes, all_rows, self.up.rows)),
                                self.down_pages(blocks))
        bundle_pages = np.flatnonzero(rows_to_pages(0, self.bundle_bytes, all_rows, self.n_ff,
                                                    -(-self.n_ff * self.bundle_bytes // PAGE)))
        return {"neurons": len(rows), "gate_bytes": len(rows) * self.gate.row_bytes,
                "up_bytes": len(rows) * self.up.row_bytes,
                "down_blocks": int(blocks.sum()), "down_bytes": int(blocks.sum()) * self.down.qtype.type_size * self.down.rows,
                "gguf_pages": gguf_pages, "bundle_bytes": len(rows) * self.bundle_bytes, "bundle_pages": bundle_pages}


METRICS = ("neurons", "gate_bytes", "up_bytes", "down_bytes", "gguf_bytes", "gguf_page_bytes", "bundle_bytes",
           "bundle_page_bytes")


@dataclass
class IOReport:
    """I/O of the FFNs per token and layer. `read[m]` and `new[m]` are (n_tokens, n_layer)
    arrays for each metric in METRICS; `dense[m]` is (n_layer,) for a token that uses every
    neuron. gguf_bytes = gate + up + down (block-granular) bytes; *_page_bytes = pages x PAGE."""

    layers: list[int]
    seq: np.ndarray
    pos: np.ndarray
    read: dict[str, np.ndarray]
    new: dict[str, np.ndarray]
    dense: dict[str, np.ndarray]
    page: int = PAGE

    @property
    def n_tokens(self) -> int:
        return len(self.pos)

    def per_token(self, which: str = "read") -> dict[str, np.ndarray]:
        """metric -> (n_tokens,) summed over layers."""
        src = self.read if which == "read" else self.new
        return {m: v.sum(axis=1) for m, v in src.items()}

    def totals(self) -> dict:
        """Mean per token, summed over layers: bytes read and newly loaded in both layouts, the
        dense figures, and the fraction of the dense FFN I/O each one is. "new" is averaged over
        the tokens that have a predecessor (the first token of a sequence loads its whole set)."""
        dense = {m: float(v.sum()) for m, v in self.dense.items()}
        out = {"n_tokens": self.n_tokens, "n_layer": len(self.layers), "dense": dense}
        steady = np.ones(self.n_tokens, bool)  # tokens with a predecessor in their sequence
        steady[0] = False
        steady[1:] &= self.seq[1:] == self.seq[:-1]
        for which, src in (("read", self.read), ("new", self.new)):
            rows = slice(None) if which == "read" else steady
            mean = {m: float(v[rows].sum(axis=1).mean()) if v[rows].size else 0.0 for m, v in src.items()}
            out[which] = mean
            out[which + "_fraction"] = {m: mean[m] / dense[m] if dense[m] else 0.0 for m in mean}
        out["saved_bytes"] = {m: dense[m] - out["read"][m] for m in METRICS if m != "neurons"}
        return out


def account(model, used: np.ndarray, layers: list[int], seq: np.ndarray | None = None,
            pos: np.ndarray | None = None) -> IOReport:
    """I/O accounting for `used` (bool (n_layer, n_tokens, n_ff), layer indices `layers`).
    "new" compares each token with the previous token of the same sequence (by `seq`)."""
    used = np.asarray(used, bool)
    n_layer, n_tok, _ = used.shape
    seq = np.zeros(n_tok, np.int64) if seq is None else np.asarray(seq)
    pos = np.arange(n_tok) if pos is None else np.asarray(pos)
    read = {m: np.zeros((n_tok, n_layer), np.int64) for m in METRICS}
    new = {m: np.zeros((n_tok, n_layer), np.int64) for m in METRICS}
    dense = {m: np.zeros(n_layer, np.int64) for m in METRICS}
    for li, L in enumerate(layers):
        geo = FFNGeometry.of(model, L)
        d = geo.account(np.ones(geo.n_ff, bool))
        _fill(dense, li, None, d)
        prev_used, prev = None, None
        for i in range(n_tok):
            u = used[li, i]
            cur = geo.account(u)
            _fill(read, li, i, cur)
            if i == 0 or seq[i] != seq[i - 1]:
                _fill(new, li, i, cur)
            else:
                fresh = u & ~prev_used
                nb = geo.needed_col_blocks(u) & ~geo.needed_col_blocks(prev_used)
                n_new = int(fresh.sum())
                inc = {"neurons": n_new, "gate_bytes": n_new * geo.gate.row_bytes, "up_bytes": n_new * geo.up.row_bytes,
                       "down_bytes": int(nb.sum()) * geo.down.qtype.type_size * geo.down.rows,
                       "gguf_pages": np.setdiff1d(cur["gguf_pages"], prev["gguf_pages"]),
                       "bundle_bytes": n_new * geo.bundle_bytes,
                       "bundle_pages": np.setdiff1d(cur["bundle_pages"], prev["bundle_pages"])}
                _fill(new, li, i, inc)
            prev_used, prev = u, cur
    return IOReport(list(layers), seq, pos, read, new, dense)


def _fill(dst: dict, li: int, i: int | None, r: dict) -> None:
    vals = {"neurons": r["neurons"], "gate_bytes": r["gate_bytes"], "up_bytes": r["up_bytes"],
            "down_bytes": r["down_bytes"], "gguf_bytes": r["gate_bytes"] + r["up_bytes"] + r["down_bytes"],
            "gguf_page_bytes": len(r["gguf_pages"]) * PAGE, "bundle_bytes": r["bundle_bytes"],
            "bundle_page_bytes": len(r["bundle_pages"]) * PAGE}
    for m, v in vals.items():
        if i is None:
            dst[m][li] = v
        else:
            dst[m][i, li] = v


# ---- quality against the dense model ------------------------------------------------------------


@dataclass
class DenseReference:
    """The dense model's run that every policy is compared with."""

    prompt_ids: list[int]
    greedy: list[int]  # n_steps greedy tokens after the prompt
    ids: list[int]  # the teacher-forced sequence: prompt + greedy
    logits: np.ndarray  # (len(ids), n_vocab) float32, every position of `ids`
    text: str = ""


def _greedy(model, prompt_ids: list[int], n_steps: int) -> list[int]:
    state = model.new_state(len(prompt_ids) + n_steps + 1)
    logits = model.forward(state, prompt_ids)
    out = []
    for _ in range(n_steps):
        out.append(int(np.argmax(logits[-1])))
        if len(out) < n_steps:
            logits = model.forward(state, [out[-1]])
    return out


def dense_reference(model, prompt: str | list[int], n_steps: int = 8) -> DenseReference:
    """Greedy continuation of `n_steps` tokens and the logits at every position of prompt +
    continuation, from the dense model."""
    ids = list(model.tokenizer.encode(prompt)) if isinstance(prompt, str) else list(prompt)
    greedy = _greedy(model, ids, n_steps)
    seq = ids + greedy
    logits = model.forward(model.new_state(len(seq) + 1), seq, all_logits=True)
    return DenseReference(ids, greedy, seq, logits, model.tokenizer.decode(greedy))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) of the softmaxes over the last axis, in nats (float64, one per row)."""
    lp, lq = _log_softmax(p_logits), _log_softmax(q_logits)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0)


@dataclass
class SimResult:
    policy: str
    ref: DenseReference
    logits: np.ndarray  # (len(ref.ids), n_vocab): teacher forced with the policy
    kl: np.ndarray  # (len(ref.ids),) KL(dense || sparse) per position, nats
    top1: np.ndarray  # (len(ref.ids),) bool: same argmax as dense
    greedy: list[int]  # the policy's own greedy continuation
    text: str
    io: IOReport  # of the teacher-forced run
    used_fraction: np.ndarray  # (n_layer, n_tokens) share of neurons used

    @property
    def first_divergence(self) -> int | None:
        """First greedy step where the policy's token differs from the dense one (None: none)."""
        for i, (a, b) in enumerate(zip(self.greedy, self.ref.greedy)):
            if a != b:
                return i
        return None

    def summary(self) -> dict:
        t = self.io.totals()
        return {"policy": self.policy, "neurons_used": float(self.used_fraction.mean()),
                "kl_mean": float(self.kl.mean()), "kl_max": float(self.kl.max()), "top1": float(self.top1.mean()),
                "greedy_same": sum(a == b for a, b in zip(self.greedy, self.ref.greedy)),
                "greedy_steps": len(self.ref.greedy), "first_divergence": self.first_divergence,
                "dense_text": self.ref.text, "text": self.text,
                "ffn_dense_bytes": t["dense"]["gguf_bytes"],
                "gguf_bytes": t["read_fraction"]["gguf_bytes"], "gguf_pages": t["read_fraction"]["gguf_page_bytes"],
                "gate_up_bytes": (t["read"]["gate_bytes"] + t["read"]["up_bytes"])
                / (t["dense"]["gate_bytes"] + t["dense"]["up_bytes"]),
                "down_bytes": t["read_fraction"]["down_bytes"],
                "bundle_bytes": t["read_fraction"]["bundle_bytes"],
                "bundle_pages": t["read_fraction"]["bundle_page_bytes"],
                "new_gguf_pages": t["new_fraction"]["gguf_page_bytes"],
                "new_bundle_bytes": t["new_fraction"]["bundle_bytes"],
                "new_bundle_pages": t["new_fraction"]["bundle_page_bytes"]}


def simulate(model, policy: Policy, ref: DenseReference, greedy: bool = True) -> SimResult:
    """Teacher-force `ref.ids` with the policy (logits, KL, top-1 and the I/O accounting), and
    (greedy=True) run the policy's own greedy continuation from the prompt."""
    with sparse_ffn(model, policy) as hook:
        logits = model.forward(model.new_state(len(ref.ids) + 1), ref.ids, all_logits=True)
    layers, used, seq, pos = hook.used()
    io = account(model, used, layers, seq, pos)
    kl = kl_divergence(ref.logits, logits)
    top1 = ref.logits.argmax(axis=-1) == logits.argmax(axis=-1)
    own: list[int] = []
    if greedy:
        with sparse_ffn(model, policy):
            own = _greedy(model, ref.prompt_ids, len(ref.greedy))
    return SimResult(policy.name, ref, logits, kl, top1, own, model.tokenizer.decode(own) if own else "", io,
                     used.mean(axis=-1))


def sweep(model, prompt: str | list[int], policies, n_steps: int = 8) -> list[dict]:
    """`simulate` each policy against one dense reference; one summary row each."""
    ref = dense_reference(model, prompt, n_steps)
    return [simulate(model, p, ref).summary() for p in policies]
