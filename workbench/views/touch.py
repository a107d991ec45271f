"""Which weights were touched: the three layers of the touch map, and the fault-count trap.

    logical   the rows each op read (recorded per op; exact)
    mapped    pages present in the process's page table (/proc/self/pagemap); fault-around
              maps up to 16+ neighbours per fault, so this overstates what was read
    cached    pages in the page cache (mincore); readahead included

    plot_touch_map(prof, "logical", span=3)     tensor x block heatmap for one forward pass
    plot_touch_layers(prof)                     the three layers side by side + the gap
    plot_fault_estimates(prof)                  faults x 4 KiB vs faults x fault-around vs truth
    plot_faults_by_tensor(prof)                 the same per tensor kind
    plot_residency_passes(prof)                 the layers pass by pass

`span` picks forward passes: None (the whole run), an index (0 = prefill, 1.. = decode
steps, negative from the end) or a (start, stop) pair of indices.
"""

from __future__ import annotations

import re

import numpy as np

from ..instrument.residency import rows_to_pages
from .cost import pass_label, passes
from .style import LAYER_COLORS, MB, axes, model_label, short, subplots, tensor_kind, tensor_layer

LAYERS = ("logical", "mapped", "cached")
_LAYER_TEXT = {
    "logical": "logical:\npages holding rows the ops read",
    "mapped": "mapped:\npages present in the process (pagemap)",
    "cached": "cached:\npages in the page cache (mincore)",
    "gap": "the gap: mapped but never read\n(fault-around, readahead)",
}


def _page(profile) -> int:
    return int(profile.residency.get("page_size", 4096)) if profile.residency else 4096


def _n_pages(profile) -> int:
    if profile.residency.get("n_pages"):
        return int(profile.residency["n_pages"])
    end = max((t["offset"] + t["nbytes"] for t in profile.tensors.values()), default=0)
    return -(-end // _page(profile))


def span_passes(profile, span=None) -> list[int]:
    """Indices of the forward passes a span selects."""
    n = len(passes(profile.events))
    if span is None:
        return list(range(n))
    if isinstance(span, (tuple, list)):
        return list(range(n))[slice(*span)]
    i = int(span)
    if not -n <= i < n:
        raise IndexError(f"pass {i} out of range: this profile has {n} forward passes")
    return [i % n]


def span_label(profile, span=None) -> str:
    ps = passes(profile.events)
    idx = span_passes(profile, span)
    if span is None or len(idx) == len(ps):
        return f"whole run ({len(ps)} forward passes)"
    if len(idx) == 1:
        return pass_label(ps[idx[0]])
    return f"passes {idx[0]}-{idx[-1]} ({pass_label(ps[idx[0]])} .. {pass_label(ps[idx[-1]])})"


def _sample_index(profile, p: dict) -> int | None:
    for i, s in enumerate(profile.residency.get("samples", [])):
        if s["phase"] == p["phase"] and s["pos"] == p["pos"]:
            return i
    return None


def layer_mask(profile, layer: str = "logical", span=None, new: bool = False) -> np.ndarray:
    """bool per page of the model file: set where `layer` has the page for this span.

    logical: pages holding any row an op in the span read. mapped / cached: pages present
    at the end of the span (new=True: only those that became present during it)."""
    ps = passes(profile.events)
    idx = span_passes(profile, span)
    n_pages, page = _n_pages(profile), _page(profile)
    if layer == "logical":
        keys = {(ps[i]["phase"], ps[i]["pos"]) for i in idx}
        out = np.zeros(n_pages, bool)
        for e in profile.events:
            name = e.get("tensor")
            if not name or (e["phase"], e["pos"]) not in keys or name not in profile.tensors:
                continue
            t = profile.tensors[name]
            if e.get("rows") is None:
                out[t["offset"] // page: -(-(t["offset"] + t["nbytes"]) // page)] = True
            else:
                out |= rows_to_pages(t["offset"], t["row_bytes"], np.asarray(e["rows"], np.int64), t["rows"], n_pages)
        return out
    if layer not in ("mapped", "cached"):
        raise ValueError(f"layer must be one of {LAYERS}, not {layer!r}")
    samples = profile.residency.get("samples") if profile.residency else None
    if not samples:
        raise ValueError("this profile has no residency samples (run_profile(..., residency=True))")
    first = _sample_index(profile, ps[idx[0]])
    last = _sample_index(profile, ps[idx[-1]])
    if first is None or last is None:
        raise ValueError("the residency samples do not line up with the forward passes of this profile")
    end = samples[min(last + 1, len(samples) - 1)][layer]  # the sample after the span's last pass
    return end & ~samples[first][layer] if new else end.copy()


def _row_key(profile, name: str):
    """Global tensors before the layers (token_embd) on top, then layer by layer, then the rest."""
    L = tensor_layer(name)
    off = profile.tensors[name]["offset"]
    if L is not None:
        return (1, L, off)
    first_block = min((t["offset"] for n, t in profile.tensors.items() if tensor_layer(n) is not None), default=0)
    return (0 if off < first_block else 2, 0, off)


def select_tensors(profile, tensors=None) -> list[str]:
    """Tensor names, layer by layer (file order inside a layer): all (None), a regex
    searched in each name, or a list."""
    names = sorted(profile.tensors, key=lambda n: _row_key(profile, n))
    if tensors is None:
        return names
    if isinstance(tensors, str):
        rx = re.compile(tensors)
        picked = [n for n in names if rx.search(n)]
    else:
        want = set(tensors)
        picked = [n for n in names if n in want]
    if not picked:
        raise ValueError(f"no tensor matches {tensors!r}")
    return picked


def tensor_filter(kind: str | None = None, layer: int | None = None) -> str | None:
    """A regex for select_tensors: a tensor kind ('ffn_gate'), a layer, or both."""
    if kind in (None, "all") and layer is None:
        return None
    k = re.escape(kind) if kind not in (None, "all") else r"[^.]+"
    if layer is None:
        return rf"(^|\.){k}\.weight$"
    return rf"^blk\.{int(layer)}\.{k}\.weight$"


def grid_from_mask(profile, mask: np.ndarray, names: list[str], blocks: int = 64) -> np.ndarray:
    """(len(names), blocks): per tensor, its pages cut into `blocks` equal slices; each
    cell is the fraction of that slice's pages set in `mask`. A tensor smaller than
    `blocks` pages repeats its pages across the cells."""
    page = _page(profile)
    cs = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    out = np.zeros((len(names), blocks))
    for r, name in enumerate(names):
        t = profile.tensors[name]
        a, b = t["offset"] // page, -(-(t["offset"] + t["nbytes"]) // page)
        n = b - a
        edges = np.linspace(0, n, blocks + 1)
        lo = np.minimum(np.floor(edges[:-1]).astype(np.int64), n - 1)
        hi = np.maximum(np.ceil(edges[1:]).astype(np.int64), lo + 1)
        out[r] = (cs[a + hi] - cs[a + lo]) / (hi - lo)
    return out


def touch_grid(profile, layer: str = "logical", span=None, blocks: int = 64, tensors=None,
               new: bool = False) -> tuple[np.ndarray, list[str]]:
    """The heatmap data: (grid[tensor, block] in 0..1, tensor names)."""
    names = select_tensors(profile, tensors)
    if layer == "gap":
        m = layer_mask(profile, "mapped", span, new) & ~layer_mask(profile, "logical", span)
    else:
        m = layer_mask(profile, layer, span, new)
    return grid_from_mask(profile, m, names, blocks), names


def _tensor_ticks(ax, names: list[str]):
    if len(names) <= 40:
        ax.set_yticks(range(len(names)), [short(n) for n in names], fontsize=7 if len(names) > 12 else 8)
        return
    n_layers = len({tensor_layer(x) for x in names} - {None})
    stride, gap = max(1, n_layers // 15), max(1, len(names) // 45)
    ticks, labels, last = [], [], object()
    for i, n in enumerate(names):
        L = tensor_layer(n)
        if (L is None or (L != last and L % stride == 0)) and (not ticks or i - ticks[-1] >= gap):
            ticks.append(i)
            labels.append(short(n) if L is None else f"blk.{L}.*")
        last = L
    ax.set_yticks(ticks, labels, fontsize=7)


def _heat(ax, grid, names, cmap, title, cbar_label=None):
    im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    _tensor_ticks(ax, names)
    ax.set_xlabel(f"position inside the tensor\n({grid.shape[1]} equal slices of its pages)", fontsize=8)
    ax.set_xticks([0, grid.shape[1] - 1], ["start", "end"], fontsize=7)
    ax.set_title(title, fontsize=9)
    if cbar_label:
        ax.get_figure(root=True).colorbar(im, ax=ax, label=cbar_label, shrink=0.8)
    return im


_CMAPS = {"logical": "Greens", "mapped": "Blues", "cached": "Purples", "gap": "Oranges"}


def plot_touch_map(profile, layer: str = "logical", span=None, blocks: int = 64, tensors=None, new: bool = False,
                   ax=None):
    """Heatmap: one row per tensor (file order), one column per slice of its pages;
    colour = fraction of the slice's 4 KiB pages in the chosen layer for the chosen span."""
    grid, names = touch_grid(profile, layer, span, blocks, tensors, new)
    ax = axes(ax, figsize=(8, max(3, min(7, 0.18 * len(names) + 1.8))))
    mb = _layer_bytes(profile, layer, span, new, names) / MB
    _heat(ax, grid, names, _CMAPS.get(layer, "Greys"),
          f"{_LAYER_TEXT.get(layer, layer)}{' (new in this span)' if new and layer != 'logical' else ''}\n"
          f"{span_label(profile, span)}: {mb:.1f} MB of these {len(names)} tensors\n{model_label(profile)}",
          cbar_label=f"fraction of the slice's {_page(profile) // 1024} KiB pages")
    ax.set_ylabel("tensor (layer by layer)")
    return ax


def _layer_bytes(profile, layer, span, new, names) -> float:
    page = _page(profile)
    m = (layer_mask(profile, "mapped", span, new) & ~layer_mask(profile, "logical", span) if layer == "gap"
         else layer_mask(profile, layer, span, new))
    sel = np.zeros_like(m)
    for n in names:
        t = profile.tensors[n]
        sel[t["offset"] // page: -(-(t["offset"] + t["nbytes"]) // page)] = True
    return float((m & sel).sum()) * page


def plot_touch_layers(profile, span=None, blocks: int = 32, tensors=None, new: bool = False, ax=None):
    """The three layers side by side for the same tensors and span, and a fourth panel with
    the gap: pages mapped that no op read. Returns the four Axes."""
    names = select_tensors(profile, tensors)
    axs = subplots(4, (13, max(3.5, min(7.5, 0.18 * len(names) + 2.2))), ax, sharey=True)
    for ax, layer in zip(axs, LAYERS + ("gap",)):
        grid, _ = touch_grid(profile, layer, span, blocks, names, new)
        mb = _layer_bytes(profile, layer, span, new, names) / MB
        _heat(ax, grid, names, _CMAPS[layer], f"{_LAYER_TEXT[layer]}\n{mb:.1f} MB")
        if layer == "gap" and grid.max() == 0:
            ax.text(0.5, 0.5, "none:\nevery mapped page\nof these tensors\nwas read", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="#a63603")
    axs[0].set_ylabel("tensor (layer by layer)")
    fig = axs[0].get_figure(root=True)
    fa = (profile.residency or {}).get("fault_around") or {}
    extra = f"; fault-around probe: {fa['pages_per_fault']:.0f} pages mapped per fault" if fa else ""
    fig.suptitle(f"Three layers of 'touched': {span_label(profile, span)}"
                 f"{' (mapped / cached: only pages that became present in this span)' if new else ''}\n"
                 f"colour: fraction of each slice's {_page(profile) // 1024} KiB pages (white: none, dark: all)"
                 f"\n{model_label(profile)}{extra}", fontsize=10)
    return axs


def fault_estimates(profile) -> dict:
    """The numbers behind the "it only touched X %" claims, in bytes.

    faults: minor + major page faults counted around the ops (getrusage; anonymous memory
    included); faults_4k: faults x page size; faults_fault_around: faults x the pages one
    fault mapped in the fault-around probe; logical: bytes of the rows the ops read;
    mapped: tensor pages present at the end; cached: tensor pages in the page cache."""
    tl = profile.touch_layers()
    t = tl["total"]
    page = tl["page_size"]
    faults = sum(max(e["minflt"], 0) + max(e["majflt"], 0) for e in profile.events)
    fa = (tl.get("fault_around") or {}).get("pages_per_fault") or float("nan")
    return {"weights": t["nbytes"], "logical": t["logical_bytes"], "logical_pages": t.get("logical_page_bytes", 0),
            "faults": faults, "page_size": page,
            "pages_per_fault": fa, "faults_4k": faults * page, "faults_fault_around": faults * page * fa,
            "mapped": t.get("mapped_bytes", 0), "newly_mapped": t.get("newly_mapped_bytes", 0),
            "cached": t.get("cached_bytes", 0), "cold": profile.meta.get("settings", {}).get("cold"),
            "madvise": profile.meta.get("settings", {}).get("madvise")}


def plot_fault_estimates(profile, ax=None):
    """Horizontal bars: how much of the weights a run read, counted four ways, against the
    logical truth. The trap: faults x 4 KiB looks sparse when fault-around is on."""
    f = fault_estimates(profile)
    ax = axes(ax, figsize=(9, 4))
    pk = f["page_size"] // 1024
    rows = [
        ("logical truth:\nbytes of the rows the ops read", f["logical"], LAYER_COLORS["logical"]),
        (f"faults x {pk} KiB\n({f['faults']:,} faults)", f["faults_4k"], "#e6550d"),
        (f"faults x fault-around\n({f['pages_per_fault']:.0f} pages per fault in a probe)", f["faults_fault_around"], "#fdae6b"),
        ("mapped at the end\n(pagemap; what RSS counts)", f["mapped"], LAYER_COLORS["mapped"]),
        ("in the page cache\n(mincore)", f["cached"], LAYER_COLORS["cached"]),
    ]
    y = np.arange(len(rows))
    vals = [v / MB if np.isfinite(v) else 0 for _, v, _ in rows]
    ax.barh(y, vals, color=[c for *_, c in rows])
    xmax = max(vals + [f["weights"] / MB]) * 1.3
    for yi, v in zip(y, vals):
        ax.text(v + xmax * 0.01, yi, f"{v:,.1f} MB ({100 * v * MB / f['weights']:.0f} % of the weights)",
                va="center", fontsize=8)
    ax.axvline(f["weights"] / MB, color="k", ls="--", lw=1)
    ax.text(f["weights"] / MB, len(rows) - 0.45, f" all weights: {f['weights'] / MB:.1f} MB", fontsize=8, va="bottom")
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, xmax)
    ax.set_xlabel("MB of weight data (1 MB = 10^6 bytes)")
    how = ("cold cache" if f["cold"] else "warm cache") + (f", MADV_{f['madvise'].upper()}" if f["madvise"] else "")
    n_pass = len(passes(profile.events))
    ax.set_title(f"How much of the model did {n_pass} forward passes read? ({how})\n{model_label(profile)}",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return ax


def faults_by_tensor(profile, by: str = "kind") -> list[dict]:
    """Per tensor kind (or per tensor): logical bytes, faults counted in the ops that read
    it, faults x page, faults x fault-around, mapped bytes at the end."""
    tl = profile.touch_layers()
    page = tl["page_size"]
    fa = (tl.get("fault_around") or {}).get("pages_per_fault") or float("nan")
    key = (lambda n: tensor_kind(n)) if by == "kind" else (lambda n: n)
    rows: dict = {}
    for r in tl["tensors"]:
        k = key(r["tensor"])
        d = rows.setdefault(k, {"group": k, "nbytes": 0, "logical": 0, "mapped": 0, "faults": 0})
        d["nbytes"] += r["nbytes"]
        d["logical"] += r["logical_bytes"]
        d["mapped"] += r.get("mapped_bytes", 0)
    for e in profile.events:
        if e.get("tensor") in profile.tensors:
            rows[key(e["tensor"])]["faults"] += max(e["minflt"], 0) + max(e["majflt"], 0)
    out = sorted(rows.values(), key=lambda d: -d["nbytes"])
    for d in out:
        d["faults_4k"] = d["faults"] * page
        d["faults_fault_around"] = d["faults"] * page * fa
    return out


def plot_faults_by_tensor(profile, by: str = "kind", ax=None):
    """Grouped bars per tensor kind: logical truth, faults x 4 KiB, faults x fault-around, mapped."""
    rows = [r for r in faults_by_tensor(profile, by) if r["nbytes"] > 0]
    ax = axes(ax, figsize=(10, 4.5))
    x = np.arange(len(rows))
    page_k = _page(profile) // 1024
    fa = fault_estimates(profile)["pages_per_fault"]
    series = [("logical truth (rows read)", "logical", LAYER_COLORS["logical"]),
              (f"faults x {page_k} KiB", "faults_4k", "#e6550d"),
              (f"faults x fault-around ({fa:.0f} pages)", "faults_fault_around", "#fdae6b"),
              ("mapped at the end (pagemap)", "mapped", LAYER_COLORS["mapped"])]
    w = 0.8 / len(series)
    for i, (label, k, c) in enumerate(series):
        ax.bar(x - 0.4 + w * (i + 0.5), [r[k] / MB if np.isfinite(r[k]) else 0 for r in rows], width=w, color=c,
               label=label)
    ax.set_xticks(x, [r["group"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylabel("MB of weight data (symlog scale)")
    ax.set_xlabel("tensor kind (all layers together); faults counted during the ops that read it")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"Per tensor kind: what the fault counters suggest vs what was read\n{model_label(profile)}",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return ax


def residency_passes(profile) -> dict:
    """Per residency sample (before each pass, and at the end): MB mapped and cached of the
    tensor data, cumulative logical MB read and cumulative faults x page."""
    samples = profile.residency.get("samples", []) if profile.residency else []
    page = _page(profile)
    sel = np.zeros(_n_pages(profile), bool)
    for t in profile.tensors.values():
        sel[t["offset"] // page: -(-(t["offset"] + t["nbytes"]) // page)] = True
    ps = passes(profile.events)
    labels, mapped, cached, logical, faults = [], [], [], [], []
    seen = np.zeros_like(sel)
    nf = 0
    for i, s in enumerate(samples):
        labels.append("start" if i == 0 else ("after prefill" if ps[i - 1]["phase"] == "prefill"
                                              else f"after pos {ps[i - 1]['pos']}"))
        mapped.append((s["mapped"] & sel).sum() * page / MB)
        cached.append((s["cached"] & sel).sum() * page / MB)
        if i > 0:
            seen |= layer_mask(profile, "logical", i - 1)
            p = ps[i - 1]
            nf += sum(max(e["minflt"], 0) + max(e["majflt"], 0) for e in profile.events
                      if e["phase"] == p["phase"] and e["pos"] == p["pos"])
        logical.append((seen & sel).sum() * page / MB)
        faults.append(nf * page / MB)
    return {"labels": labels, "mapped_MB": mapped, "cached_MB": cached, "logical_MB": logical, "faults_4k_MB": faults}


def plot_residency_passes(profile, ax=None):
    """Lines over the run: MB of tensor pages mapped / cached / read so far / faults x 4 KiB."""
    d = residency_passes(profile)
    if not d["labels"]:
        raise ValueError("this profile has no residency samples (run_profile(..., residency=True))")
    ax = axes(ax, figsize=(8, 4))
    x = np.arange(len(d["labels"]))
    ax.plot(x, d["logical_MB"], "o-", color=LAYER_COLORS["logical"], lw=5, ms=11, alpha=0.5,
            label="read so far (logical, whole pages)")
    ax.plot(x, d["mapped_MB"], "s--", color=LAYER_COLORS["mapped"], label="mapped (pagemap)")
    ax.plot(x, d["cached_MB"], "^:", color=LAYER_COLORS["cached"], label="in the page cache (mincore)")
    ax.plot(x, d["faults_4k_MB"], "d-", color="#e6550d", label=f"faults so far x {_page(profile) // 1024} KiB")
    ax.set_xticks(x, d["labels"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("MB of the model's tensor data")
    ax.set_xlabel("residency snapshot (taken between forward passes)")
    ax.set_title(f"The touch layers pass by pass\n{model_label(profile)}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def layer_agreement(profile, a: str = "logical", b: str = "mapped", span=None, new: bool = True) -> dict:
    """Compare two layers page by page over the tensor data: bytes in both, only in a,
    only in b, and whether they are identical (new: mapped/cached pages that became
    present in the span, the right comparison for a cold, MADV_RANDOM run)."""
    page = _page(profile)
    sel = np.zeros(_n_pages(profile), bool)
    for t in profile.tensors.values():
        sel[t["offset"] // page: -(-(t["offset"] + t["nbytes"]) // page)] = True
    ma = layer_mask(profile, a, span, new) & sel
    mb = layer_mask(profile, b, span, new) & sel
    return {"both_bytes": int((ma & mb).sum()) * page, f"only_{a}_bytes": int((ma & ~mb).sum()) * page,
            f"only_{b}_bytes": int((mb & ~ma).sum()) * page, "identical": bool((ma == mb).all()),
            "page_size": page}


def tensor_reads(profile, tensor: str, span=None) -> dict:
    """Per op kind that read `tensor` in the span: a bool per row (read at least once)."""
    t = profile.tensors[tensor]
    ps = passes(profile.events)
    keys = {(ps[i]["phase"], ps[i]["pos"]) for i in span_passes(profile, span)}
    out: dict = {}
    for e in profile.events:
        if e.get("tensor") != tensor or (e["phase"], e["pos"]) not in keys:
            continue
        label = e["op"] if e.get("layer") is None or e["op"] != "matmul" else f"matmul (layer {e['layer']})"
        if e["op"] == "matmul" and e.get("layer") is None:
            label = "matmul (output projection)"
        rows = out.setdefault(label, np.zeros(t["rows"], bool))
        if e.get("rows") is None:
            rows[:] = True
        else:
            rows[np.asarray(e["rows"], np.int64)] = True
    return out


def plot_tensor_reads(profile, tensor: str = "token_embd.weight", span=None, bins: int = 512, ax=None):
    """One strip per op kind that read the tensor: which of its rows were read (a bin is
    dark if it holds at least one row read), with the counts."""
    reads = tensor_reads(profile, tensor, span)
    if not reads:
        raise ValueError(f"no op read {tensor} in this span")
    n = profile.tensors[tensor]["rows"]
    bins = min(bins, n)
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    grid = np.array([np.logical_or.reduceat(r, edges[:-1]) for r in reads.values()], float)
    ax = axes(ax, figsize=(10, 1.2 + 0.6 * len(reads)))
    ax.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(reads)), [f"{k}: {int(r.sum()):,} of {n:,} rows ({100 * r.mean():.3g} %)"
                                       for k, r in reads.items()], fontsize=8)
    ax.set_xticks([0, bins - 1], ["row 0", f"row {n - 1:,}"], fontsize=8)
    ax.set_xlabel(f"rows of {short(tensor)} in {bins} bins (dark: the bin holds at least one row that was read)")
    ax.set_title(f"Which rows of {short(tensor)} each op read: {span_label(profile, span)}\n{model_label(profile)}",
                 fontsize=10)
    return ax
