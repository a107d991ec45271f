"""Sparse loading: could a token skip the FFN weights it does not need?

Plots of FFN activations (an array (n_layer, n_tokens, n_ff) or `research.activations`'
Activations; the statistics come from that module) and of sparse-loading simulations
(`research.sparse_loading`'s summary rows):

    plot_near_zero_by_layer(a, thresholds)   share of neurons with |a| < t per layer, one line per t
    plot_neuron_frequency(a, layers, t)      per layer: how often each neuron is active, sorted
    plot_activation_stability(a, t)          Jaccard of each token's active set with the previous one
    plot_policy_sweep(summaries)             quality cost against I/O; rows against strided columns
"""

from __future__ import annotations

import numpy as np

from ..research import activations as A
from .style import axes, subplots


def _layers_and_width(acts) -> tuple[list[int], int]:
    """The layer index of each first-axis entry, and the number of FFN neurons."""
    n_layer, _, n_ff = np.shape(getattr(acts, "values", acts))
    return list(getattr(acts, "layers", range(n_layer))), n_ff


def _layer_axes(ax, ylabel: str, title: str) -> None:
    ax.set_xlabel("transformer layer")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)


def plot_near_zero_by_layer(acts, thresholds=(0.005, 0.01, 0.02, 0.05, 0.1), ax=None):
    """One line per threshold t: per layer, the share of the FFN neurons with |a| < t (mean over tokens)."""
    layers, n_ff = _layers_and_width(acts)
    ax = axes(ax, figsize=(8, 3.5))
    for t in thresholds:
        ax.plot(layers, A.near_zero_fraction(acts, t).mean(axis=1), marker=".", label=f"|a| < {t:g}")
    _layer_axes(ax, f"share of the {n_ff:,} neurons (mean over tokens)", "Near-zero FFN activations per layer")
    ax.legend(fontsize=8, ncol=len(thresholds))
    return ax


def plot_neuron_frequency(acts, layers=(0, 5, 15, 29), t: float = 0.01, ax=None):
    """For each of `layers`: the share of tokens for which each neuron is active (|a| >= t),
    most frequently active first (hot neurons on the left, cold on the right)."""
    all_layers, _ = _layers_and_width(acts)
    freq = A.neuron_frequency(acts, t=t)
    ax = axes(ax, figsize=(8, 3.5))
    for L in layers:
        ax.plot(np.sort(freq[all_layers.index(L)])[::-1], label=f"layer {L}")
    ax.set_xlabel("neurons, most frequently active first")
    ax.set_ylabel(f"share of tokens with |a| >= {t:g}")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Activation frequency per neuron (hot on the left, cold on the right)", fontsize=10)
    return ax


def plot_activation_stability(acts, t: float = 0.01, top_fraction: float = 0.1, ax=None):
    """Per layer, the mean Jaccard index of each token's active set with the previous token's,
    for two meanings of active: |a| >= t, and among the `top_fraction` largest |a|."""
    layers, n_ff = _layers_and_width(acts)
    k = max(1, round(top_fraction * n_ff))
    ax = axes(ax, figsize=(8, 3.5))
    ax.plot(layers, np.nanmean(A.stability(acts, t=t), axis=1), marker=".", label=f"|a| >= {t:g}")
    ax.plot(layers, np.nanmean(A.stability(acts, top_k=k), axis=1), marker=".",
            label=f"top {100 * top_fraction:g} % ({k} largest |a|)")
    _layer_axes(ax, "Jaccard index with the previous token",
                "How much of the active set carries over from one token to the next")
    ax.legend(fontsize=8)
    return ax


# what each I/O count of a summary row means, as drawn against the quality cost
_IO_LINES = [("bundle_bytes", "logical bytes (= neurons used; bundled layout)", "o"),
             ("gguf_bytes", "logical bytes, GGUF layout (ffn_down by blocks)", "s"),
             ("gguf_pages", "pages of the GGUF file", "^"),
             ("bundle_pages", "pages, bundled layout", "v")]


def plot_policy_sweep(summaries: list[dict], ax=None):
    """Two panels for a sweep of policies (`SimResult.summary()` rows, e.g. thresholds in
    order). Left: mean KL against the dense model over the I/O per token, counted four ways
    (fractions of the dense FFN). Right: the bytes of the gate/up rows and of the ffn_down
    column blocks over the share of neurons used."""
    axs = subplots(2, (13, 4.2), ax)
    kl = [s["kl_mean"] for s in summaries]
    for key, label, marker in _IO_LINES:
        axs[0].plot([s[key] for s in summaries], kl, marker=marker, label=label)
    for s in summaries:
        name = s["policy"].removeprefix("threshold(").removesuffix(")")
        axs[0].annotate(name, (s["gguf_pages"], s["kl_mean"]), fontsize=7, xytext=(4, -8), textcoords="offset points")
    axs[0].set_yscale("log")
    axs[0].set_xlim(0, 1.05)
    axs[0].set_xlabel("I/O per token, fraction of the dense FFN")
    axs[0].set_ylabel("mean KL(dense || sparse), nats")
    axs[0].set_title("Policies: quality cost against I/O", fontsize=10)
    axs[0].legend(fontsize=7)
    used = [s["neurons_used"] for s in summaries]
    axs[1].plot(used, [s["gate_up_bytes"] for s in summaries], marker="o", label="ffn_gate + ffn_up rows")
    axs[1].plot(used, [s["down_bytes"] for s in summaries], marker="s", label="ffn_down column blocks")
    axs[1].plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    axs[1].set_xlim(0, 1.05)
    axs[1].set_ylim(0, 1.05)
    axs[1].set_xlabel("share of neurons used")
    axs[1].set_ylabel("bytes read, fraction of dense")
    axs[1].set_title("Rows are skipped one by one; strided columns are not", fontsize=10)
    axs[1].legend(fontsize=8)
    for a in axs:
        a.grid(alpha=0.3)
    return axs
