"""Shared look and small helpers for the views: one colour per op kind, tensor names,
units, and the figure <-> PNG plumbing. No data is computed here."""

from __future__ import annotations

import io
import re

# one colour per op kind, the same in every view
OP_COLORS = {
    "matmul": "#1f77b4", "attention": "#d62728", "rms_norm": "#2ca02c", "rope": "#9467bd", "silu_mul": "#ff7f0e",
    "gelu_mul": "#ffbb78", "add": "#8c564b", "embed": "#e377c2", "scale": "#7f7f7f", "softmax": "#bcbd22",
}
PHASE_COLORS = {"prefill": "#4c72b0", "decode": "#dd8452"}
LAYER_COLORS = {"logical": "#1b5e20", "mapped": "#0d47a1", "cached": "#6a1b9a"}
MB = 1e6

_BLK = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight|\.bias)?$")


def op_color(op: str) -> str:
    return OP_COLORS.get(op, "#999999")


def tensor_kind(name: str) -> str:
    """'blk.3.ffn_gate.weight' -> 'ffn_gate'; 'token_embd.weight' -> 'token_embd'."""
    m = _BLK.match(name)
    if m:
        return m.group(2)
    return name.removesuffix(".weight").removesuffix(".bias")


def tensor_layer(name: str) -> int | None:
    m = _BLK.match(name)
    return int(m.group(1)) if m else None


def short(name: str) -> str:
    return name.removesuffix(".weight")


def axes(ax=None, figsize=(8, 4.5)):
    """The given Axes, or a new figure's (pyplot, so notebooks show it inline)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def subplots(n: int, figsize, axes_in=None, **kw):
    """n Axes in a row (or the n given ones)."""
    if axes_in is not None:
        if len(axes_in) != n:
            raise ValueError(f"this view draws {n} panels; pass {n} Axes, not {len(axes_in)}")
        return list(axes_in)
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(1, n, figsize=figsize, layout="constrained", **kw)
    return list(ax) if n > 1 else [ax]


def model_label(profile) -> str:
    """'SmolLM2-135M-Instruct.Q4_1.gguf, numpy' from a profile's meta."""
    m = getattr(profile, "meta", {}) or {}
    path = m.get("model", {}).get("path", "model")
    s = m.get("settings", {})
    be = s.get("backend", "?")
    if s.get("weight_cache", "none") not in (None, "none"):
        be += f" + {s['weight_cache']} cache"
    return f"{path}, {be}"


def fig_png(fig, dpi: int = 100) -> bytes:
    """A figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figure_of(ax_or_axes):
    a = ax_or_axes[0] if isinstance(ax_or_axes, (list, tuple)) else ax_or_axes
    if hasattr(a, "flat"):  # numpy array of Axes
        a = a.flat[0]
    return a.get_figure(root=True) if hasattr(a, "get_figure") else a
