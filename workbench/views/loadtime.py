"""Load time: what each load strategy does to the page cache and the process's memory.

    g, rep = workbench.loading.load_file(path, "mmap+touch", threads=2, cold=True)
    plot_load_timeline(rep)                   per-tensor spans + residency and RSS over time
    bench = workbench.loading.load_bench("smollm2", threads=(2,))
    plot_load_bench(bench)                    one panel per strategy, cold beside warm
    plot_load_summary(bench)                  load and first-token time per strategy

A report is a LoadReport or its dict (as in `load_bench(...)["runs"]`).
"""

from __future__ import annotations

import numpy as np

from .style import MB, axes, subplots

_SERIES = [("cached_bytes", "file in the page cache", "#6a1b9a", "-"),
           ("mapped_bytes", "model mapping present (pagemap)", "#0d47a1", "--"),
           ("rss_anon", "RSS anonymous (copies, heap)", "#e6550d", "-"),
           ("rss_file", "RSS file-backed (mapped pages)", "#31a354", ":")]


def _d(report) -> dict:
    return report.to_dict() if hasattr(report, "to_dict") else report


def run_label(r: dict) -> str:
    return f"{r['strategy']}, {r['threads']} thread{'s' if r['threads'] > 1 else ''}, {'cold' if r['cold'] else 'warm'} cache"


def plot_load_residency(report, ax=None, legend: bool = True, title: bool = True):
    """Lines over time: MB of the file in the page cache, of the mapping present, and the
    process's RSS (anonymous vs file-backed); markers at 'load returned' and 'first token'."""
    r = _d(report)
    ax = axes(ax, figsize=(8, 3.5))
    s = r.get("samples", [])
    t = np.array([x["t"] for x in s]) * 1e3
    for key, label, color, ls in _SERIES:
        if any(key in x for x in s):
            ax.plot(t, [x.get(key, np.nan) / MB for x in s], ls, color=color, label=label, lw=1.6)
    from matplotlib.transforms import blended_transform_factory as blend

    ax.axhline(r["file_bytes"] / MB, color="k", lw=0.8, ls=(0, (1, 3)))
    ax.text(0.01, r["file_bytes"] / MB, "file size", fontsize=7, va="bottom", transform=blend(ax.transAxes, ax.transData))
    ax.axvline(r["seconds"] * 1e3, color="k", lw=1)
    ax.text(r["seconds"] * 1e3, 0.98, "load returned ", fontsize=7, rotation=90, va="top", ha="right",
            transform=blend(ax.transData, ax.transAxes))
    ax.set_xlabel("time since the load started (ms)")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    if title:
        ft = r.get("first_token_seconds")
        ax.set_title(f"{run_label(r)}: load {r['seconds'] * 1e3:.0f} ms"
                     + (f", first token at {ft * 1e3:.0f} ms" if ft else ""), fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return ax


def plot_tensor_spans(report, ax=None, title: bool = True):
    """One thin bar per tensor from when its load started to when it ended (colour: thread)."""
    r = _d(report)
    ax = axes(ax, figsize=(8, 3.5))
    ts = sorted(r.get("tensors", []), key=lambda x: x["start"])
    if not ts:
        ax.text(0.5, 0.5, f"{r['strategy']}: no per-tensor pass\n(pages fault in when the forward first reads them)",
                ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set_yticks([])
    else:
        threads = sorted({x["thread"] for x in ts})
        colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
        for i, x in enumerate(ts):
            ax.barh(i, max(x["end"] - x["start"], 1e-6) * 1e3, left=x["start"] * 1e3, height=1.0,
                    color=colors[threads.index(x["thread"]) % len(colors)])
        big = max(ts, key=lambda x: x["bytes"])
        ax.annotate(f"{big['name']} ({big['bytes'] / MB:.0f} MB)", (big["end"] * 1e3, ts.index(big)),
                    fontsize=7, xytext=(4, 0), textcoords="offset points", va="center")
        ax.set_ylim(len(ts), -1)
        ax.set_ylabel(f"tensor ({len(ts)}, by start time)")
        if len(threads) > 1:
            from matplotlib.patches import Patch

            ax.legend(handles=[Patch(color=colors[k % len(colors)], label=f"thread {k + 1}") for k in range(len(threads))],
                      fontsize=7, loc="upper right")
    ax.set_xlabel("time since the load started (ms)")
    if title:
        ax.set_title(f"Per-tensor load spans: {run_label(r)}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return ax


def plot_load_timeline(report, ax=None):
    """Two panels over one time axis: per-tensor spans on top, residency and RSS below."""
    r = _d(report)
    if ax is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(9, 6), layout="constrained")
        axs = list(fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.2]))
    else:
        axs = subplots(2, None, ax)
    plot_tensor_spans(r, axs[0], title=False)
    plot_load_residency(r, axs[1], title=False)
    axs[0].set_xlabel("")
    ft = r.get("first_token_seconds")
    fig = axs[0].get_figure(root=True)
    fig.suptitle(f"Loading {r.get('model', 'the model')}: {run_label(r)}\nload returned after "
                 f"{r['seconds'] * 1e3:.0f} ms" + (f"; first token after {ft * 1e3:.0f} ms" if ft else "")
                 + f"; {r['faults'].get('minor', 0):,} minor / {r['faults'].get('major', 0):,} major faults", fontsize=10)
    return axs


def plot_load_bench(bench: dict, ax=None):
    """A grid: one row per strategy (and thread count), cold cache left, warm right; each
    panel shows residency and RSS over time on a shared time axis."""
    runs = bench["runs"]
    keys = list(dict.fromkeys((r["strategy"], r["threads"]) for r in runs))
    temps = [c for c in (True, False) if any(r["cold"] == c for r in runs)]
    if ax is None:
        import matplotlib.pyplot as plt

        fig, grid = plt.subplots(len(keys), len(temps), figsize=(6 * len(temps), 2.3 * len(keys) + 1),
                                 sharey=True, squeeze=False, layout="constrained")
    else:
        grid = np.asarray(ax, dtype=object).reshape(len(keys), len(temps))
        fig = grid[0, 0].get_figure(root=True)
    for i, key in enumerate(keys):
        for j, cold in enumerate(temps):
            a = grid[i, j]
            sel = [r for r in runs if (r["strategy"], r["threads"]) == key and r["cold"] == cold]
            if not sel:
                a.set_axis_off()
                continue
            r = sel[-1]
            plot_load_residency(r, a, legend=False, title=False)
            ft = r.get("first_token_seconds")
            a.set_title(f"{run_label(r)}: load {r['seconds'] * 1e3:.0f} ms"
                        + (f", first token {ft * 1e3:.0f} ms" if ft else ""), fontsize=8)
            a.set_xlabel("ms since the load started" if i == len(keys) - 1 else "")
    from matplotlib.lines import Line2D

    fig.legend(handles=[Line2D([], [], color=c, ls=ls, label=label) for _, label, c, ls in _SERIES],
               loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Load strategies for {bench.get('model', 'the model')}: page cache and memory until the load "
                 f"returned\n(cold cache left, warm right; each panel has its own time axis)", fontsize=10)
    return grid


def plot_load_summary(bench: dict, ax=None):
    """Grouped bars per strategy: time until the load returned and until the first token,
    cold and warm cache."""
    runs = bench["runs"]
    keys = list(dict.fromkeys((r["strategy"], r["threads"]) for r in runs))
    ax = axes(ax, figsize=(9, 4))
    series = []
    for cold in (True, False):
        for what, field_ in (("load", "seconds"), ("first token", "first_token_seconds")):
            vals = []
            for k in keys:
                sel = [r[field_] for r in runs if (r["strategy"], r["threads"]) == k and r["cold"] == cold
                       and r.get(field_) is not None]
                vals.append(np.median(sel) * 1e3 if sel else 0)
            if any(vals):
                series.append((f"{what}, {'cold' if cold else 'warm'}", vals))
    colors = {"load, cold": "#08519c", "first token, cold": "#6baed6", "load, warm": "#a63603",
              "first token, warm": "#fd8d3c"}
    x = np.arange(len(keys))
    w = 0.8 / max(len(series), 1)
    for i, (label, vals) in enumerate(series):
        ax.bar(x - 0.4 + w * (i + 0.5), vals, width=w, label=label, color=colors.get(label))
    ax.set_xticks(x, [f"{s}\n{t} thr." for s, t in keys], fontsize=8)
    ax.set_ylabel("time since the load started (ms)")
    ax.set_xlabel("load strategy")
    n = max(1, len(runs) // max(1, len(keys) * 2))
    ax.set_title(f"Load strategies for {bench.get('model', 'the model')}: time to load and to the first token\n"
                 f"(each bar: median of {n} run{'s' if n > 1 else ''} in a fresh process)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ax
