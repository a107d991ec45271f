"""Sparsity: how many weights (and FFN activations) are close to zero.

Weights (from the dequantized tensors; nothing is recorded):

    plot_weight_hist(model.weights.blocks[3].ffn_gate, threshold=0.01)
    plot_weight_block_map(tensor, threshold=0.01)   rows x 32-wide quant blocks
    plot_weight_sparsity(model, threshold=0.01)     layer x tensor kind: fraction |w| < t

Activations (the engine does not record them; a temporary hook does):

    acts = capture_ffn_activations(model, "Once upon a time", n=8)
    plot_activation_sparsity(acts, threshold=0.05)  layer x token: fraction |a| < t

`capture_ffn_activations` wraps `model.ops.silu_mul` for the length of one generation
and keeps, per layer and token, silu(gate) and silu(gate) * up (the input of ffn_down).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .style import axes, short, subplots, tensor_kind


def _values(tensor) -> np.ndarray:
    """float32 weights of a QTensor (dequantized), or an array as given."""
    return tensor.dequantize() if hasattr(tensor, "dequantize") else np.asarray(tensor, np.float32)


def _name(tensor) -> str:
    if hasattr(tensor, "qtype"):
        return f"{short(tensor.name)} ({tensor.qtype.name}, {tensor.rows} x {tensor.cols})"
    return f"array {tuple(np.shape(tensor))}"


def near_zero_fraction(values: np.ndarray, threshold: float) -> float:
    return float(np.mean(np.abs(values) < threshold)) if np.size(values) else 0.0


def plot_weight_hist(tensor, threshold: float = 0.01, bins: int = 120, ax=None):
    """Histogram of |w| on log-spaced bins, with the threshold and the fraction below it."""
    w = np.abs(_values(tensor)).ravel()
    ax = axes(ax, figsize=(7, 3.8))
    nz = w[w > 0]
    lo = max(float(nz.min()) if nz.size else 1e-8, 1e-8)
    hi = max(float(w.max()), lo * 10)
    edges = np.geomspace(lo, hi, bins + 1)
    ax.hist(nz, bins=edges, color="#4c72b0")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(threshold, color="#d62728", ls="--", lw=1.2)
    frac, zeros = near_zero_fraction(w, threshold), float(np.mean(w == 0))
    ax.text(0.02, 0.95, f"|w| < {threshold:g}: {100 * frac:.2f} % of {w.size:,} weights\n"
                        f"exactly 0: {100 * zeros:.2f} % (not on the log axis)",
            transform=ax.transAxes, va="top", fontsize=8, bbox=dict(fc="white", ec="#ccc"))
    ax.set_xlabel("|w| after dequantization (log scale)")
    ax.set_ylabel("number of weights (log scale)")
    ax.set_title(f"Distribution of |w|: {_name(tensor)}", fontsize=10)
    ax.grid(alpha=0.3)
    return ax


def block_map(values: np.ndarray, threshold: float, block: int = 32, max_rows: int = 256) -> tuple[np.ndarray, int]:
    """(map[row_bin, block], rows per bin): fraction |w| < t in each block of `block`
    consecutive weights of a row; rows are merged into at most `max_rows` bins."""
    w = np.abs(np.asarray(values, np.float32))
    if w.ndim == 1:
        w = w[None, :]
    rows, cols = w.shape
    nb = -(-cols // block)
    pad = nb * block - cols
    small = np.pad(w < threshold, ((0, 0), (0, pad)), constant_values=False).reshape(rows, nb, block)
    counts = np.full(nb, block)
    counts[-1] = block - pad
    per_block = small.sum(axis=2) / counts  # (rows, nb)
    per = -(-rows // max_rows)
    if per > 1:
        n = -(-rows // per)
        padr = n * per - rows
        s = np.pad(per_block, ((0, padr), (0, 0))).reshape(n, per, nb).sum(axis=1)
        k = np.full(n, per)
        k[-1] = per - padr
        per_block = s / k[:, None]
    return per_block, per


def plot_weight_block_map(tensor, threshold: float = 0.01, block: int = 32, max_rows: int = 256, ax=None):
    """Heatmap: rows (output features) x blocks of 32 input weights (a quant block for
    Q4/Q5/Q8 types); colour = fraction of the block's |w| below the threshold."""
    m, per = block_map(_values(tensor), threshold, block, max_rows)
    ax = axes(ax, figsize=(7, 5))
    im = ax.imshow(m, aspect="auto", cmap="magma_r", vmin=0, vmax=max(float(m.max()), 1e-9), interpolation="nearest")
    ax.get_figure(root=True).colorbar(im, ax=ax, label=f"fraction of the block with |w| < {threshold:g}")
    ax.set_xlabel(f"block of {block} consecutive weights in a row (input dimension)")
    ax.set_ylabel("row (output feature)" + (f", {per} rows per line" if per > 1 else ""))
    if per > 1:
        ticks = ax.get_yticks()
        ticks = [t for t in ticks if 0 <= t < m.shape[0]]
        ax.set_yticks(ticks, [str(int(t * per)) for t in ticks])
    ax.set_title(f"Where the near-zero weights are: {_name(tensor)}", fontsize=10)
    return ax


def weight_sparsity(model, threshold: float = 0.01) -> list[dict]:
    """Per weight tensor of the model: kind, layer, fraction |w| < t, exact zeros, mean |w|."""
    from .style import tensor_layer

    out = []
    for t in model.weights.tensors():
        w = t.dequantize()
        a = np.abs(w)
        out.append({"tensor": t.name, "kind": tensor_kind(t.name), "layer": tensor_layer(t.name), "type": t.qtype.name,
                    "n": int(a.size), "near_zero": float(np.mean(a < threshold)), "zeros": float(np.mean(a == 0)),
                    "mean_abs": float(a.mean()), "threshold": threshold})
    return out


def plot_weight_sparsity(model_or_rows, threshold: float = 0.01, ax=None):
    """Heatmap: layer (rows) x tensor kind (columns), colour = fraction of |w| < threshold;
    tensors outside the layers (token_embd, output_norm) are listed in the title."""
    rows = (model_or_rows if isinstance(model_or_rows, list) else weight_sparsity(model_or_rows, threshold))
    thr = rows[0]["threshold"] if rows else threshold
    kinds = list(dict.fromkeys(r["kind"] for r in rows if r["layer"] is not None))
    layers = sorted({r["layer"] for r in rows if r["layer"] is not None})
    m = np.full((len(layers), len(kinds)), np.nan)
    for r in rows:
        if r["layer"] is not None:
            m[layers.index(r["layer"]), kinds.index(r["kind"])] = r["near_zero"]
    ax = axes(ax, figsize=(8, max(3.5, 0.18 * len(layers) + 2)))
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
    ax.get_figure(root=True).colorbar(im, ax=ax, label=f"fraction of weights with |w| < {thr:g}")
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right", fontsize=8)
    step = max(1, len(layers) // 15)
    ax.set_yticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)], fontsize=8)
    ax.set_ylabel("transformer layer")
    ax.set_xlabel("weight tensor kind")
    glob = ", ".join(f"{short(r['tensor'])} {100 * r['near_zero']:.1f} %" for r in rows if r["layer"] is None)
    ax.set_title(f"Weight sparsity: share of |w| < {thr:g} per tensor\n(outside the layers: {glob})", fontsize=10)
    return ax


# ---- activation sparsity -------------------------------------------------------------


@dataclass
class FFNActivations:
    """FFN activations of one generation, per layer and token position.

    gate: silu(ffn_gate @ x), shape (n_layer, n_tokens, n_ff)
    product: silu(gate) * (ffn_up @ x): the input of ffn_down, same shape
    tokens: the text of each position's token; n_prompt: how many came from the prompt."""

    gate: np.ndarray
    product: np.ndarray
    tokens: list[str] = field(default_factory=list)
    n_prompt: int = 0
    model: str = ""


def capture_ffn_activations(model, prompt: str, n: int = 8, progress=None) -> FFNActivations:
    """Generate `n` tokens (greedy) after `prompt` and keep every FFN's gate activations.
    `progress(done, total)` is called once per forward pass."""
    from ..generate import generate
    from ..research.activations import ffn_hook

    per_layer: dict[int, list] = {}
    passes = {"n": 0}
    total = n  # forward passes: 1 prefill + n-1 decode steps

    def keep(kind, ops, g, u, f):
        be = ops.route(kind)
        g = np.asarray(be.to_host(g), np.float32)
        u = np.asarray(be.to_host(u), np.float32)
        if kind == "silu_mul":
            s = g / (1.0 + np.exp(-g))
        else:  # gelu_mul (tanh approximation, as the op computes it)
            s = 0.5 * g * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (g + np.float32(0.044715) * g**3)))
        per_layer.setdefault(ops.layer, []).append((ops.pos, s, s * u))
        if ops.layer == model.config.n_layer - 1:
            passes["n"] += 1
            if progress:
                progress(passes["n"], total)
        return f

    with ffn_hook(model.ops, keep):
        r = generate(model, prompt, n=n)
    layers = sorted(per_layer)
    gate = np.stack([np.concatenate([s for _, s, _ in sorted(per_layer[L], key=lambda x: x[0])]) for L in layers])
    prod = np.stack([np.concatenate([p for _, _, p in sorted(per_layer[L], key=lambda x: x[0])]) for L in layers])
    ids = list(r.prompt_ids) + list(r.ids)
    tok = model.tokenizer
    pieces = [tok.decode([i]) for i in ids][: gate.shape[1]]
    return FFNActivations(gate, prod, pieces, len(r.prompt_ids), getattr(model, "path", ""))


def token_label(text: str, width: int = 10) -> str:
    """A token's text for an axis: spaces shown as '␣', newlines as '\\n'."""
    return text.replace("\n", "\\n").replace(" ", "␣")[:width] or "''"


def activation_sparsity(acts: FFNActivations, threshold: float = 0.05, which: str = "gate",
                        relative: bool = False) -> np.ndarray:
    """(n_layer, n_tokens): fraction of the FFN's n_ff activations with |a| < threshold
    (relative=True: threshold times the largest |a| of that layer and token)."""
    a = np.abs(acts.gate if which == "gate" else acts.product)
    t = threshold * a.max(axis=2, keepdims=True) if relative else threshold
    return (a < t).mean(axis=2)


def plot_activation_sparsity(acts: FFNActivations, threshold: float = 0.05, which: str = "gate",
                             relative: bool = False, ax=None):
    """Heatmap: layer x token position, colour = fraction of FFN activations with |a| < t."""
    f = activation_sparsity(acts, threshold, which, relative)
    n_layer, n_tok = f.shape
    ax = axes(ax, figsize=(max(6, 0.35 * n_tok + 3), max(3.5, 0.15 * n_layer + 2)))
    im = ax.imshow(f, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    what = "silu(gate)" if which == "gate" else "silu(gate) x up (input of ffn_down)"
    thr = f"{threshold:g} x the largest |a|" if relative else f"{threshold:g}"
    ax.get_figure(root=True).colorbar(im, ax=ax, label=f"fraction of the {acts.gate.shape[2]} activations, |a| < {thr}")
    labels = [token_label(t) for t in acts.tokens]
    step = max(1, n_tok // 40)
    ax.set_xticks(range(0, n_tok, step), labels[::step], rotation=60, ha="right", fontsize=7)
    lstep = max(1, n_layer // 15)
    ax.set_yticks(range(0, n_layer, lstep), [str(i) for i in range(0, n_layer, lstep)], fontsize=8)
    if 0 < acts.n_prompt < n_tok:
        ax.axvline(acts.n_prompt - 0.5, color="white", lw=1.5, ls="--")
        ax.set_xlabel("token (left of the dashed line: the prompt; right: generated tokens)")
    else:
        ax.set_xlabel("token")
    ax.set_ylabel("transformer layer")
    mean = 100 * float(f.mean())
    ax.set_title(f"FFN activation sparsity: {what}\nshare with |a| < {thr} per layer and token "
                 f"(mean {mean:.1f} %)", fontsize=10)
    return ax


def plot_activation_hist(acts: FFNActivations, layer: int, threshold: float = 0.05, which: str = "gate", ax=None):
    """Histogram of the activations of one layer over all tokens, with the threshold band."""
    a = (acts.gate if which == "gate" else acts.product)[layer].ravel()
    ax = axes(ax, figsize=(7, 3.5))
    lo, hi = np.percentile(a, [0.05, 99.95])
    lo, hi = min(float(lo), -2 * threshold), max(float(hi), 2 * threshold)
    ax.hist(a, bins=np.linspace(lo, hi, 161), color="#4c72b0")
    ax.axvspan(-threshold, threshold, color="#d62728", alpha=0.2, label=f"|a| < {threshold:g}: "
               f"{100 * float(np.mean(np.abs(a) < threshold)):.1f} %")
    ax.set_yscale("log")
    ax.set_xlabel(("silu(gate)" if which == "gate" else "silu(gate) x up") + " value (the central 99.9 %)")
    ax.set_ylabel("count (log scale)")
    ax.set_title(f"FFN activations of layer {layer} over {a.size // acts.gate.shape[2]} tokens", fontsize=10)
    ax.legend(fontsize=8)
    return ax


def plot_weight_overview(tensor, threshold: float = 0.01, ax=None):
    """Two panels for one tensor: the |w| histogram and the block map."""
    axs = subplots(2, (13, 4.5), ax)
    plot_weight_hist(tensor, threshold, ax=axs[0])
    plot_weight_block_map(tensor, threshold, ax=axs[1])
    return axs
