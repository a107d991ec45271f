"""Per-op cost: where the time of a profiled run goes.

    plot_op_cost(prof)                      ms per forward pass by op kind, prefill beside decode
    plot_op_cost(prof, by="layer")          the same per transformer layer
    plot_layer_cost(prof, phase="decode")   per layer, stacked by op kind
    plot_token_timeline(prof)               one forward pass: one row per layer, ops as spans
    plot_host_device(prof)                  per op kind: host time beside device time per call

All take a Profile (or anything with `.events` and `.meta`) and return the Axes drawn on.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..instrument import analysis
from .style import PHASE_COLORS, axes, model_label, op_color

PHASES = ("prefill", "decode")


def passes(events: list[dict]) -> list[dict]:
    """The forward passes of a run in order: phase, pos, n_tokens, start_ns, end_ns, ops."""
    return analysis.token_spans(events)


def _phase_norm(events, phase: str, normalize: str | None) -> tuple[float, str]:
    """Divisor and unit text: time per forward pass, per token, or in total."""
    ps = [p for p in passes(events) if p["phase"] == phase]
    if normalize == "pass":
        return max(len(ps), 1), "per forward pass"
    if normalize == "token":
        return max(sum(p["n_tokens"] for p in ps), 1), "per token"
    return 1, "in total"


def _phase_note(events, phases=PHASES) -> str:
    notes = []
    for ph in phases:
        ps = [p for p in passes(events) if p["phase"] == ph]
        if ps:
            notes.append(f"{ph}: {len(ps)} pass{'es' if len(ps) > 1 else ''} of "
                         f"{ps[0]['n_tokens'] if ph == 'prefill' else 1} token{'s' if ph == 'prefill' and ps[0]['n_tokens'] > 1 else ''}")
    return "; ".join(notes)


def cost_rows(events: list[dict], by: str = "op", phase: str | None = None, normalize: str | None = "pass",
              top: int | None = 12, metric: str = "wall_ms") -> dict:
    """{"groups": [...], "phases": [...], "values": {phase: [value per group]}, "unit": str}.
    Groups sorted by their largest value; beyond `top`, folded into one "other" group."""
    phases = [p for p in PHASES if any(e["phase"] == p for e in events)] if phase is None else [phase]
    vals: dict = {}
    unit = ""
    for ph in phases:
        div, unit = _phase_norm(events, ph, normalize)
        vals[ph] = {r[by]: r[metric] / div for r in analysis.table(events, by, ph)}
    groups = sorted({g for v in vals.values() for g in v},
                    key=lambda g: (-max(v.get(g, 0) for v in vals.values()), str(g)))  # ties: by name
    if by == "layer":  # in layer order, ops outside the layers ('-') last; never folded
        groups = sorted(groups, key=lambda g: (isinstance(g, str), 0 if isinstance(g, str) else g))
    elif top is not None and len(groups) > top:
        keep, rest = groups[:top], groups[top:]
        for v in vals.values():
            v[f"other ({len(rest)})"] = sum(v.get(g, 0) for g in rest)
        groups = keep + [f"other ({len(rest)})"]
    return {"groups": groups, "phases": phases, "values": {ph: [vals[ph].get(g, 0.0) for g in groups] for ph in phases},
            "unit": unit}


_BY_LABEL = {"op": "op kind", "layer": "transformer layer ('-': outside the layers)", "tensor": "weight tensor",
             "backend": "backend", "phase": "phase"}


def plot_op_cost(profile, by: str = "op", phase: str | None = None, top: int | None = 12, normalize: str | None = "pass",
                 metric: str = "wall_ms", ax=None):
    """Bars: time per group (op kind, layer, tensor, backend), prefill beside decode.

    phase: None draws both phases side by side; normalize: "pass" (ms per forward pass),
    "token" (ms per token) or None (total ms over the run); top: at most this many groups
    (layers are always all shown, in order, as vertical bars)."""
    data = cost_rows(profile.events, by, phase, normalize, top, metric)
    groups, phases = data["groups"], data["phases"]
    vertical = by == "layer"
    if vertical:
        ax = axes(ax, figsize=(max(7, 0.3 * len(groups) + 2), 4))
    else:
        ax = axes(ax, figsize=(8, max(2.5, 0.32 * len(groups) * max(len(phases), 1) + 1.4)))
    pos = np.arange(len(groups))
    w = 0.8 / max(len(phases), 1)
    vmax = max([max(v) for v in data["values"].values() if v] or [0])
    for i, ph in enumerate(phases):
        v = data["values"][ph]
        at = pos - 0.4 + w * (i + 0.5)
        if vertical:
            ax.bar(at, v, width=w, color=PHASE_COLORS.get(ph, "#888"), label=ph)
            continue
        bars = ax.barh(at, v, height=w, color=PHASE_COLORS.get(ph, "#888"), label=ph)
        for b, val in zip(bars, v):
            if val > 0:
                ax.text(b.get_width() + vmax * 0.01, b.get_y() + b.get_height() / 2, _fmt(val),
                        va="center", fontsize=7)
    what = {"wall_ms": "wall time", "cpu_ms": "CPU time"}.get(metric, metric)
    unit = " (ms)" if metric.endswith("_ms") else ""
    value_label = f"{what} {data['unit']}{unit}"
    labels = [("outside\n(embed,\noutput)" if g == "-" else str(g)) for g in groups]
    if vertical:
        ax.set_xticks(pos, labels, fontsize=7)
        ax.set_xlabel("transformer layer")
        ax.set_ylabel(value_label)
        ax.set_ylim(0, vmax * 1.1 if vmax else 1)
        ax.grid(axis="y", alpha=0.3)
    else:
        ax.set_yticks(pos, labels)
        ax.invert_yaxis()
        ax.set_xlabel(value_label)
        ax.set_ylabel(_BY_LABEL.get(by, by))
        ax.set_xlim(0, vmax * 1.15 if vmax else 1)
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Where the time goes, by {_BY_LABEL.get(by, by).split(' (')[0]}\n"
                 f"{model_label(profile)}\n{_phase_note(profile.events, phases)}", fontsize=10)
    if len(phases) > 1:
        ax.legend(title="phase", loc="upper left" if vertical else "lower right", fontsize=8)
    return ax


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def layer_op_matrix(events: list[dict], phase: str | None = "decode", normalize: str | None = "pass"):
    """(columns, ops, matrix[op, column] in ms, unit): columns are the layers 0..N-1 and
    'in'/'out' for ops outside the layers (embedding before, final norm and output after)."""
    evs = [e for e in events if phase is None or e["phase"] == phase]
    div, unit = _phase_norm(events, phase, normalize) if phase else (1, "in total")
    layers = sorted({e["layer"] for e in evs if e.get("layer") is not None})
    cols = ["in"] + [str(L) for L in layers] + ["out"]
    ops = sorted({e["op"] for e in evs}, key=lambda o: -sum(e["wall_ns"] for e in evs if e["op"] == o))
    m = np.zeros((len(ops), len(cols)))
    first_layer_seen: dict = {}
    for e in evs:
        key = (e["phase"], e["pos"])
        if e.get("layer") is not None:
            first_layer_seen[key] = True
            c = cols.index(str(e["layer"]))
        else:
            c = len(cols) - 1 if first_layer_seen.get(key) else 0
        m[ops.index(e["op"]), c] += e["wall_ns"] / 1e6
    return cols, ops, m / div, unit


def plot_layer_cost(profile, phase: str | None = "decode", normalize: str | None = "pass", ax=None):
    """Vertical bars per transformer layer, stacked by op kind (one phase)."""
    cols, ops, m, unit = layer_op_matrix(profile.events, phase, normalize)
    ax = axes(ax, figsize=(max(7, 0.28 * len(cols) + 2), 4))
    x = np.arange(len(cols))
    bottom = np.zeros(len(cols))
    for i, op in enumerate(ops):
        ax.bar(x, m[i], bottom=bottom, color=op_color(op), label=op, width=0.8)
        bottom += m[i]
    step = max(1, len(cols) // 16)
    ticks = [0] + list(range(1, len(cols) - 1, step)) + [len(cols) - 1]
    ax.set_xticks(ticks, [cols[t] for t in ticks])
    ax.set_xlabel("transformer layer ('in': token embedding; 'out': final norm + output projection)")
    ax.set_ylabel(f"wall time {unit} (ms)")
    ax.set_title(f"Cost per layer, {phase or 'all phases'}, stacked by op kind\n{model_label(profile)}", fontsize=10)
    ax.legend(ncol=min(len(ops), 4), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return ax


def pick_pass(events: list[dict], index: int | None = None, phase: str | None = None) -> dict:
    """A forward pass by index (negative from the end) among the passes of `phase`.
    Default: the last decode pass (warm), else the prefill pass."""
    ps = passes(events)
    if phase is None and index is None:
        dec = [p for p in ps if p["phase"] == "decode"]
        return dec[-1] if dec else ps[-1]
    cand = [p for p in ps if phase is None or p["phase"] == phase]
    if not cand:
        raise ValueError(f"no {phase} pass in this profile")
    return cand[-1 if index is None else index]


def pass_label(p: dict) -> str:
    if p["phase"] == "prefill":
        n = p["n_tokens"]
        return f"prefill of {n} token{'s' if n > 1 else ''} (position{'s' if n > 1 else ''} {p['pos']}" + (
            f"-{p['pos'] + n - 1})" if n > 1 else ")")
    return f"decode step at position {p['pos']}"


def plot_token_timeline(profile, index: int | None = None, phase: str | None = None, ax=None):
    """One forward pass as a timeline: one row per layer (plus the embedding row on top and
    the output row at the bottom), each op a span from its start to its end."""
    p = pick_pass(profile.events, index, phase)
    evs = [e for e in profile.events if e["phase"] == p["phase"] and e["pos"] == p["pos"]]
    layers = sorted({e["layer"] for e in evs if e.get("layer") is not None})
    rows = ["embedding"] + [f"layer {L}" for L in layers] + ["output"]
    ax = axes(ax, figsize=(10, max(3.5, 0.2 * len(rows) + 1.5)))
    t0 = p["start_ns"]
    spans: dict = defaultdict(lambda: defaultdict(list))
    seen_layer = False
    for e in evs:
        if e.get("layer") is not None:
            seen_layer = True
            r = 1 + layers.index(e["layer"])
        else:
            r = len(rows) - 1 if seen_layer else 0
        spans[e["op"]][r].append(((e["start_ns"] - t0) / 1e6, max(e["wall_ns"], 1) / 1e6))
    for op in sorted(spans, key=lambda o: -sum(d for r in spans[o].values() for _, d in r)):
        for r, segs in spans[op].items():
            ax.broken_barh(segs, (r - 0.4, 0.8), facecolors=op_color(op), edgecolor="white", linewidth=0.3,
                           label=op)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), ncol=min(len(uniq), 7), fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.1), frameon=False)
    step = max(1, len(rows) // 20)
    ticks = sorted(set([0, len(rows) - 1] + list(range(1, len(rows) - 1, step))))
    ax.set_yticks(ticks, [rows[t] for t in ticks], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    dur = (p["end_ns"] - p["start_ns"]) / 1e6
    ax.set_xlim(0, dur * 1.01)
    ax.set_xlabel("time since the start of this forward pass (ms)")
    ax.set_title(f"Timeline of one forward pass: {pass_label(p)}, {dur:.1f} ms, {len(evs)} ops\n"
                 f"{model_label(profile)}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return ax


HOST_DEVICE_COLORS = {"host": "#4c72b0", "device": "#dd8452"}


def host_device_rows(events: list[dict], phase: str | None = "decode", by: str = "op") -> list[dict]:
    """Per group (op kind, ...) of one phase, most host time first: calls, host time per call (the
    op's wall time) and device time per call (its kernels and copies, from OpenCL profiling
    events) in microseconds, and the device share of the host time; the device values are
    None for a group without device times."""
    rows = []
    for r in analysis.table(events, by, phase):
        dev = r.get("device_ms")
        rows.append({by: r[by], "calls": r["count"], "host_us_per_call": 1e3 * r["wall_ms"] / r["count"],
                     "device_us_per_call": None if dev is None else 1e3 * dev / r["count"],
                     "device_share": None if dev is None or not r["wall_ms"] else dev / r["wall_ms"]})
    return rows


def plot_host_device(profile, phase: str | None = "decode", by: str = "op", ax=None):
    """Bars per group, log scale: host time per call (enqueue, copies, scheduling, the wait)
    beside device time per call (the kernels and copies themselves). Groups that ran on the
    host (no device time) show only the host bar."""
    rows = host_device_rows(profile.events, phase, by)
    ax = axes(ax, figsize=(8, max(2.5, 0.45 * len(rows) + 1.6)))
    y = np.arange(len(rows))
    timed = [i for i, r in enumerate(rows) if r["device_us_per_call"] is not None]
    ax.barh(y - 0.2, [r["host_us_per_call"] for r in rows], 0.4, color=HOST_DEVICE_COLORS["host"],
            label="host (wall time of the op)")
    ax.barh(y[timed] + 0.2, [rows[i]["device_us_per_call"] for i in timed], 0.4, color=HOST_DEVICE_COLORS["device"],
            label="device (OpenCL profiling events)")
    ax.set_yticks(y, [str(r[by]) for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"microseconds per call, {phase or 'all phases'} (log scale)")
    ax.set_ylabel(_BY_LABEL.get(by, by))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    note = "" if timed else " (no device times in this profile)"
    ax.set_title(f"Host vs device time per call, by {_BY_LABEL.get(by, by).split(' (')[0]}{note}\n"
                 f"{model_label(profile)}", fontsize=10)
    return ax
