"""FFN activation sparsity: capture the gated FFN activations per layer and token, and the
statistics of them that the sparsity papers (Deja Vu, PowerInfer, LLM in a Flash) ask for.

The activation of FFN neuron j for one token is a[j] = silu(gate[j]) * up[j] (llama SwiGLU;
gelu_tanh for Gemma 3's GeGLU): the vector that multiplies ffn_down. A neuron with a[j] = 0
contributes nothing to the FFN's output, so its row of ffn_gate, its row of ffn_up and its
column of ffn_down need not be read.

The model code is not changed: `ffn_hook` temporarily replaces `silu_mul` / `gelu_mul` on
the model's `Ops` instance (the forward calls every op through it) and learns the layer from
`ops.layer`; on exit the instance is restored exactly as it was (hooks nest).

    with capture_ffn(model) as cap:
        model.forward(model.new_state(), ids)
    acts = cap.result()                     # Activations, values (n_layer, n_tokens, n_ff)

    acts = collect(model, ["Once upon a time", "The capital of France is"], n_generate=4)
    near_zero_fraction(acts, 0.01)          # (n_layer, n_tokens): share of |a| < t
    distribution(acts)                      # per layer: quantiles of |a|, histogram, ...
    neuron_frequency(acts, t=0.05)          # (n_layer, n_ff): share of tokens a neuron is active
    hot_cold(acts, t=0.05)                  # per layer: hot / cold neuron counts, coverage
    stability(acts, top_k=128)              # (n_layer, n_tokens): Jaccard with the previous token
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

GATED_OPS = ("silu_mul", "gelu_mul")  # the ops whose output feeds ffn_down
_MISSING = object()


@contextlib.contextmanager
def ffn_hook(ops, fn: Callable) -> Iterator[None]:
    """While the block runs, every `silu_mul` / `gelu_mul` of `ops` (a model's `Ops`) returns
    `fn(kind, ops, g, u, f)` where f is what the op computed (kind is the op name). `fn` may
    return f itself (observe) or a replacement (intervene). The op still runs through `Ops`,
    so a recorder attached to the model sees it. The instance is restored on exit, also when
    another hook was installed before this one (hooks nest)."""
    saved = {name: vars(ops).get(name, _MISSING) for name in GATED_OPS}
    for name in GATED_OPS:
        inner = getattr(ops, name)  # the bound method, or an outer hook's wrapper

        def wrapper(g, u, _inner=inner, _name=name):
            return fn(_name, ops, g, u, _inner(g, u))

        setattr(ops, name, wrapper)
    try:
        yield
    finally:
        for name, prev in saved.items():
            if prev is _MISSING:
                vars(ops).pop(name, None)
            else:
                setattr(ops, name, prev)


def _host(ops, kind: str, x) -> np.ndarray:
    """A backend's output as a float32 numpy array (a copy is not made for numpy input)."""
    if not isinstance(x, np.ndarray):
        x = ops.route(kind).to_host(x)
    return np.asarray(x, dtype=np.float32)


@dataclass
class Activations:
    """Gated FFN activations, one row per processed token.

    values: float32 (n_layer, n_tokens, n_ff), the input of ffn_down (silu(g)*u or gelu(g)*u)
    layers: the layer index of each first-axis entry
    seq, pos: the sequence each token belongs to and its position in it
    ids: the input token id of each token (when known; -1 otherwise)"""

    values: np.ndarray
    layers: list[int]
    seq: np.ndarray
    pos: np.ndarray
    ids: np.ndarray
    kind: str = "silu_mul"
    texts: list[str] = field(default_factory=list)  # the prompts, for `collect`

    @property
    def n_layer(self) -> int:
        return self.values.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.values.shape[1]

    @property
    def n_ff(self) -> int:
        return self.values.shape[2]

    def layer(self, L: int) -> np.ndarray:
        """(n_tokens, n_ff) activations of layer L (the model's layer index)."""
        return self.values[self.layers.index(L)]


class FFNCapture:
    """What `capture_ffn` collects: every gated-op call as (layer, first position, rows)."""

    def __init__(self, ops, layers=None):
        self.ops = ops
        self.layers = None if layers is None else set(layers)
        self.calls: list[tuple[int, int, np.ndarray]] = []
        self.kind: str | None = None

    def __call__(self, kind, ops, g, u, f):
        L = ops.layer
        if self.layers is None or L in self.layers:
            self.kind = kind
            self.calls.append((L, ops.pos, _host(ops, kind, f).copy()))
        return f  # observe only: the forward continues with exactly what the op computed

    def result(self, ids=None) -> Activations:
        """Stack the calls into Activations. Tokens are in processing order; a new sequence
        starts wherever the position does not continue the previous call's."""
        if not self.calls:
            raise ValueError("no FFN activations were captured (did a forward pass run inside the block?)")
        layers, values, seq, pos = stack_calls(self.calls)
        ids = np.full(values.shape[1], -1, np.int64) if ids is None else np.asarray(ids, np.int64)
        return Activations(values, layers, seq, pos, ids, self.kind or "silu_mul")


def stack_calls(calls) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Per-call rows [(layer, first position, array (n, ...))] in call order ->
    (layers, stacked (n_layer, n_tokens, ...), sequence index (n_tokens,), position (n_tokens,)).
    A new sequence starts wherever a call's position does not continue the previous one."""
    by_layer: dict[int, list] = {}
    for L, pos, a in calls:
        by_layer.setdefault(L, []).append((pos, a))
    layers = sorted(by_layer)
    seq, pos_all, s, nxt = [], [], -1, None
    for p, a in by_layer[layers[0]]:
        if p != nxt:
            s += 1
        n = a.shape[0]
        seq += [s] * n
        pos_all += list(range(p, p + n))
        nxt = p + n
    counts = {L: sum(a.shape[0] for _, a in by_layer[L]) for L in layers}
    if len(set(counts.values())) != 1:
        raise ValueError(f"layers saw different numbers of tokens: {counts}")
    values = np.stack([np.concatenate([a for _, a in by_layer[L]]) for L in layers])
    return layers, values, np.asarray(seq, np.int64), np.asarray(pos_all, np.int64)


@contextlib.contextmanager
def capture_ffn(model, layers=None) -> Iterator[FFNCapture]:
    """Capture the gated FFN activations of every forward pass run in the block (all layers,
    or the given ones). The model's outputs are unchanged, bit for bit."""
    cap = FFNCapture(model.ops, layers)
    with ffn_hook(model.ops, cap):
        yield cap


def collect(model, prompts, n_generate: int = 0, layers=None, n_ctx: int | None = None) -> Activations:
    """Run each prompt in a fresh sequence (one prefill pass), then `n_generate` greedy decode
    steps, and return the FFN activations of every token fed (prompt + generated)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids_all = []
    with capture_ffn(model, layers) as cap:
        for text in prompts:
            ids = list(model.tokenizer.encode(text))
            state = model.new_state(n_ctx or len(ids) + n_generate + 1)
            logits = model.forward(state, ids)
            for _ in range(n_generate):
                nxt = int(np.argmax(logits[-1]))
                ids.append(nxt)
                logits = model.forward(state, [nxt])
            ids_all += ids
    acts = cap.result(ids_all)
    acts.texts = list(prompts)
    return acts


# ---- statistics ------------------------------------------------------------------------


def _values(acts) -> np.ndarray:
    return acts.values if isinstance(acts, Activations) else np.asarray(acts, np.float32)


def active_sets(acts, t: float | None = None, top_k: int | None = None, relative: bool = False) -> np.ndarray:
    """bool (n_layer, n_tokens, n_ff): which neurons are "active" for each layer and token:
    |a| >= t (relative=True: t times the largest |a| of that layer and token), or the top_k
    largest |a| (ties broken by index). Exactly one of t, top_k."""
    a = np.abs(_values(acts))
    if (t is None) == (top_k is None):
        raise ValueError("give exactly one of t (a threshold) or top_k")
    if top_k is not None:
        k = int(top_k)
        if not 0 < k <= a.shape[-1]:
            raise ValueError(f"top_k must be in 1..{a.shape[-1]}, not {top_k}")
        idx = np.argpartition(-a, k - 1, axis=-1)[..., :k]
        out = np.zeros(a.shape, bool)
        np.put_along_axis(out, idx, True, axis=-1)
        return out
    thr = t * a.max(axis=-1, keepdims=True) if relative else t
    return a >= thr


def near_zero_fraction(acts, t: float, relative: bool = False) -> np.ndarray:
    """(n_layer, n_tokens): fraction of the n_ff neurons with |a| < t."""
    return 1.0 - active_sets(acts, t=t, relative=relative).mean(axis=-1)


DEFAULT_QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def distribution(acts, quantiles=DEFAULT_QUANTILES, edges: np.ndarray | None = None) -> dict:
    """Per layer: quantiles of |a| over all tokens and neurons, mean and std of a, mean |a|,
    max |a|, the share of exact zeros, and a histogram of |a| on log-spaced `edges`
    (default 1e-5..1e3; values below the first edge are counted in `below`).

    Returns arrays with the layer on the first axis: "quantiles" (n_layer, len(q)), "q",
    "mean", "std", "mean_abs", "max_abs", "zero_fraction", "hist" (n_layer, n_bins),
    "edges", "below"."""
    v = _values(acts)
    n_layer = v.shape[0]
    flat = v.reshape(n_layer, -1)
    a = np.abs(flat)
    edges = np.geomspace(1e-5, 1e3, 81) if edges is None else np.asarray(edges, np.float64)
    hist = np.stack([np.histogram(a[L], bins=edges)[0] for L in range(n_layer)])
    return {
        "layers": list(getattr(acts, "layers", range(n_layer))),
        "q": np.asarray(quantiles, np.float64),
        "quantiles": np.quantile(a, quantiles, axis=1).T,
        "mean": flat.mean(axis=1, dtype=np.float64),
        "std": flat.std(axis=1, dtype=np.float64),
        "mean_abs": a.mean(axis=1, dtype=np.float64),
        "max_abs": a.max(axis=1),
        "zero_fraction": (a == 0).mean(axis=1),
        "hist": hist,
        "edges": edges,
        "below": (a < edges[0]).sum(axis=1),
    }


def neuron_frequency(acts, t: float | None = None, top_k: int | None = None, relative: bool = False) -> np.ndarray:
    """(n_layer, n_ff): share of the tokens for which each neuron is active (see `active_sets`)."""
    return active_sets(acts, t, top_k, relative).mean(axis=1)


def hot_cold(acts, t: float | None = None, top_k: int | None = None, hot: float = 0.5, cold: float = 0.01,
             coverage: float = 0.8, relative: bool = False) -> list[dict]:
    """Per layer: how many neurons are hot (active for >= `hot` of the tokens) and cold (active
    for <= `cold` of them, never-active included), the share of all activations that fall on
    hot neurons, and how many of the most frequent neurons cover `coverage` of all
    activations (PowerInfer's hot set: small when activations are power-law distributed)."""
    freq = neuron_frequency(acts, t, top_k, relative)
    out = []
    for i, f in enumerate(freq):
        total = f.sum()
        srt = np.sort(f)[::-1]
        cum = np.cumsum(srt) / total if total else np.zeros_like(srt)
        n_cov = int(np.searchsorted(cum, coverage - 1e-12) + 1) if total else 0
        out.append({"layer": getattr(acts, "layers", list(range(len(freq))))[i], "n_ff": len(f),
                    "n_hot": int((f >= hot).sum()), "n_cold": int((f <= cold).sum()),
                    "n_never": int((f == 0).sum()), "hot_share": float(f[f >= hot].sum() / total) if total else 0.0,
                    "mean_active": float(f.mean()), f"neurons_for_{coverage:g}": n_cov})
    return out


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard index |a & b| / |a | b| over the last axis of two bool arrays (1 when both are empty)."""
    inter = (a & b).sum(axis=-1)
    union = (a | b).sum(axis=-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def stability(acts, t: float | None = None, top_k: int | None = None, lag: int = 1, relative: bool = False) -> np.ndarray:
    """(n_layer, n_tokens): Jaccard index of each token's active set with the active set of the
    token `lag` positions earlier in the same sequence; NaN where there is none. High values
    mean the active set drifts slowly, which is what a window of recently active neurons
    (LLM in a Flash) relies on."""
    if lag < 1:
        raise ValueError(f"lag must be >= 1, not {lag}")
    act = active_sets(acts, t, top_k, relative)
    n = act.shape[1]
    out = np.full(act.shape[:2], np.nan)
    if n > lag:
        j = jaccard(act[:, lag:], act[:, :-lag])
        if isinstance(acts, Activations):
            same = (acts.seq[lag:] == acts.seq[:-lag]) & (acts.pos[lag:] == acts.pos[:-lag] + lag)
        else:
            same = np.ones(n - lag, bool)
        out[:, lag:] = np.where(same[None, :], j, np.nan)
    return out


def summary(acts, t: float, top_k: int | None = None) -> list[dict]:
    """One row per layer: near-zero share at t, mean Jaccard stability (at t, and of the top_k
    sets if given), hot/cold counts at t."""
    nz = near_zero_fraction(acts, t).mean(axis=1)
    st = np.nanmean(stability(acts, t=t), axis=1) if acts.n_tokens > 1 else np.full(acts.n_layer, np.nan)
    stk = (np.nanmean(stability(acts, top_k=top_k), axis=1) if top_k and acts.n_tokens > 1
           else np.full(acts.n_layer, np.nan))
    hc = hot_cold(acts, t=t)
    rows = []
    for i, L in enumerate(acts.layers):
        rows.append({"layer": L, "near_zero": float(nz[i]), "jaccard_t": float(st[i]),
                     **({"jaccard_topk": float(stk[i])} if top_k else {}),
                     "n_hot": hc[i]["n_hot"], "n_cold": hc[i]["n_cold"]})
    return rows
