"""Backend comparison: the same ops on different backends, time and error.

    profs = {"numpy": run_profile("smollm2", "Hello", n=4, backend="numpy"),
             "opencl": run_profile("smollm2", "Hello", n=4, backend="opencl")}
    errs = {"opencl": op_errors(model_on_numpy, "opencl")}
    plot_backend_comparison(profs, errors=errs)

Times come from the profiles. Errors need outputs, which profiles do not keep:
`op_errors` runs a short generation on a reference model and, at every op, runs the same
op with the same inputs on the other backend and compares the outputs.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..instrument import analysis
from .cost import passes
from .style import axes, subplots

_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860"]


def profile_label(p) -> str:
    s = p.meta.get("settings", {})
    label = s.get("backend", "?")
    if s.get("weight_cache") not in (None, "none"):
        label += f"+{s['weight_cache']}"
    return label


def _as_dict(profiles) -> dict:
    if isinstance(profiles, dict):
        return dict(profiles)
    out = {}
    for p in profiles:
        label, k = profile_label(p), 2
        while label in out:
            label, k = f"{profile_label(p)} ({k})", k + 1
        out[label] = p
    return out


def op_errors(model, backend, prompt: str = "The capital of France is", n: int = 2, only=None) -> dict:
    """Per op kind: the largest absolute and relative (to the largest |reference|)
    difference between `model`'s own backend and `backend` on identical inputs, over a
    short greedy generation. Ops `backend` does not support are skipped."""
    from ..backends import make_backend
    from ..generate import generate

    other = make_backend(backend) if isinstance(backend, str) else backend
    other.prepare(model.weights.tensors())
    ops = model.ops
    if "_run" in vars(ops):
        raise RuntimeError("these ops are already wrapped")
    original = ops._run
    caches: dict = {}
    res: dict = defaultdict(lambda: {"max_abs": 0.0, "max_rel": 0.0, "calls": 0})

    def run(op, be, fn, args, weight=None, rows=None, flops=0):
        out = original(op, be, fn, args, weight, rows, flops)
        if (only is None or op in only) and other.supports(op, getattr(weight, "qtype", None)) and other is not be:
            a = list(args)
            if op == "attention":  # the other backend keeps its own KV cache, fed the same k, v
                c = a[3]
                if id(c) not in caches:
                    _, hkv, hd = a[1].shape
                    caches[id(c)] = other.new_kv_cache(len(c.k), c.n_ctx, hkv, hd)
                a[3] = caches[id(c)]
            y = np.asarray(other.to_host(getattr(other, op)(*a)), np.float64)
            ref = np.asarray(be.to_host(out), np.float64)
            d = float(np.max(np.abs(y - ref))) if ref.size else 0.0
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            r = res[op]
            r["max_abs"] = max(r["max_abs"], d)
            r["max_rel"] = max(r["max_rel"], d / scale if scale else 0.0)
            r["calls"] += 1
        return out

    ops._run = run
    try:
        generate(model, prompt, n=n)
    finally:
        del ops._run
        if other is not backend:
            other.close()
    return dict(res)


def plot_backend_comparison(profiles, by: str = "op", phase: str = "decode", errors: dict | None = None,
                            error: str = "max_abs", top: int = 8, ax=None):
    """Two panels: time per op kind on each backend (ms per forward pass, from profiles),
    and the largest error of each op against the reference (from `op_errors`)."""
    profs = _as_dict(profiles)
    axs = subplots(2, (13, 4.5), ax)
    # time
    totals: dict = defaultdict(float)
    per: dict = {}
    fallbacks: dict = {}
    for label, p in profs.items():
        n_pass = max(1, len([s for s in passes(p.events) if s["phase"] == phase]))
        rows = analysis.table(p.events, by, phase)
        per[label] = {r[by]: r["wall_ms"] / n_pass for r in rows}
        fallbacks[label] = sum(r["fallbacks"] for r in rows)
        for r in rows:
            totals[r[by]] += r["wall_ms"] / n_pass
    groups = sorted(totals, key=lambda g: -totals[g])[:top]
    y = np.arange(len(groups))
    h = 0.8 / max(len(profs), 1)
    for i, label in enumerate(profs):
        fb = f" ({fallbacks[label]} ops fell back to numpy)" if fallbacks[label] else ""
        axs[0].barh(y - 0.4 + h * (i + 0.5), [per[label].get(g, 0) for g in groups], height=h,
                    color=_COLORS[i % len(_COLORS)], label=label + fb)
    axs[0].set_yticks(y, [str(g) for g in groups])
    axs[0].invert_yaxis()
    axs[0].set_xscale("log")
    axs[0].set_xlabel(f"wall time per {phase} forward pass (ms, log scale)")
    axs[0].set_ylabel({"op": "op kind"}.get(by, by))
    axs[0].set_title(f"Time per {by} on each backend ({phase})", fontsize=10)
    axs[0].legend(fontsize=8)
    axs[0].grid(axis="x", alpha=0.3)
    # error
    ax1 = axs[1]
    if not errors:
        ax1.text(0.5, 0.5, "no error measurements given\n(errors = {backend: op_errors(reference_model, backend)})",
                 ha="center", va="center", transform=ax1.transAxes, fontsize=9)
        ax1.set_axis_off()
    else:
        ops = [g for g in groups if any(g in e for e in errors.values())] or sorted({o for e in errors.values() for o in e})
        ye = np.arange(len(ops))
        he = 0.8 / max(len(errors), 1)
        labels = list(profs)
        for i, (label, e) in enumerate(errors.items()):
            k = labels.index(label) if label in labels else len(labels) + i
            raw = [(e.get(o) or {}).get(error, 0.0) if isinstance(e.get(o), dict) else (e.get(o) or 0.0) for o in ops]
            vals = [max(v, 1e-12) for v in raw]
            at = ye - 0.4 + he * (i + 0.5)
            ax1.barh(at, vals, height=he, color=_COLORS[k % len(_COLORS)], label=label)
            for yy, v, r in zip(at, vals, raw):
                ax1.text(v * 1.5, yy, "0 (exact)" if r == 0 else f"{r:.1e}", va="center", fontsize=7)
        top_err = max([((v or {}).get(error, 0.0) if isinstance(v, dict) else (v or 0.0))
                       for e in errors.values() for v in e.values()] + [1e-9])
        ax1.set_xlim(1e-13, top_err * 1e3)
        ax1.set_yticks(ye, ops)
        ax1.invert_yaxis()
        ax1.set_xscale("log")
        what = "largest |difference|" if error == "max_abs" else "largest |difference| / largest |reference value|"
        ax1.set_xlabel(f"{what} vs the reference, same inputs (log scale; 1e-12 = exact)")
        ax1.set_title("Error of each op against the reference backend", fontsize=10)
        ax1.legend(fontsize=8)
        ax1.grid(axis="x", alpha=0.3)
    fig = axs[0].get_figure(root=True)
    model = next(iter(profs.values())).meta.get("model", {}).get("path", "")
    fig.suptitle(f"Backends compared on {model}", fontsize=10)
    return axs
