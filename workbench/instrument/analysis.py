"""Analysis of recorded events: aggregate tables, touch summaries, token spans.
Functions of plain event dicts (as saved in profile.json); nothing here records."""

from __future__ import annotations

from collections import defaultdict

KEYS = ("op", "layer", "tensor", "phase", "backend")


def _key(e: dict, by: str):
    if by == "tensor":
        return e.get("tensor") or f"({e['op']})"
    if by == "layer":
        return "-" if e.get("layer") is None else e["layer"]
    return e[by]


def _device_ns(e: dict) -> int | None:
    """The device time of an op's kernels and copies, None where the op has none (-1 when recorded)."""
    ns = e.get("device_ns", -1)
    return None if ns is None or ns < 0 else ns


def table(events: list[dict], by: str = "op", phase: str | None = None) -> list[dict]:
    """One row per group: count, time and its share, CPU time, weight bytes, GB/s, GFLOP/s, faults.
    Where some op has a device time (OpenCL profiling events), also `device_ms`: the sum of
    the group's device times, None for a group without any."""
    if by not in KEYS:
        raise ValueError(f"group by one of {KEYS}, not {by!r}")
    evs = [e for e in events if phase is None or e["phase"] == phase]
    total = sum(e["wall_ns"] for e in evs) or 1
    timed = any(_device_ns(e) is not None for e in evs)
    groups: dict = defaultdict(list)
    for e in evs:
        groups[_key(e, by)].append(e)
    rows = []
    for k, es in groups.items():
        wall = sum(e["wall_ns"] for e in es)
        wbytes = sum(e["weight_bytes"] for e in es)
        flops = sum(e["flops"] for e in es)
        rows.append({
            by: k, "count": len(es), "wall_ms": wall / 1e6, "share": wall / total,
            "cpu_ms": sum(e["cpu_ns"] for e in es) / 1e6, "weight_MB": wbytes / 1e6,
            "GB_per_s": wbytes / wall if wall else 0.0, "GFLOP_per_s": flops / wall if wall else 0.0,
            "minflt": sum(max(e["minflt"], 0) for e in es), "majflt": sum(max(e["majflt"], 0) for e in es),
            "fallbacks": sum(1 for e in es if e.get("fallback")),
        })
        if timed:
            dev = [ns for ns in map(_device_ns, es) if ns is not None]
            rows[-1]["device_ms"] = sum(dev) / 1e6 if dev else None
    rows.sort(key=lambda r: -r["wall_ms"])
    return rows


def token_spans(events: list[dict]) -> list[dict]:
    """One span per forward pass (prefill batch or decoded token): start, duration, op count."""
    spans: dict = {}
    for e in events:
        k = (e["phase"], e["pos"])
        s = spans.setdefault(k, {"phase": e["phase"], "pos": e["pos"], "n_tokens": e["n_tokens"],
                                 "start_ns": e["start_ns"], "end_ns": 0, "ops": 0})
        s["start_ns"] = min(s["start_ns"], e["start_ns"])
        s["end_ns"] = max(s["end_ns"], e["start_ns"] + e["wall_ns"])
        s["ops"] += 1
    return sorted(spans.values(), key=lambda s: s["start_ns"])


def rows_read(events: list[dict]) -> dict[str, set | None]:
    """The logical touch map: weight tensor -> the set of row ids the ops read, or None
    where some op read every row."""
    out: dict[str, set | None] = {}
    for e in events:
        name = e.get("tensor")
        if not name:
            continue
        if e.get("rows") is None:
            out[name] = None
        elif out.get(name, set()) is not None:
            out.setdefault(name, set()).update(int(r) for r in e["rows"])
    return out


def logical_touch(events: list[dict], tensors: dict[str, dict]) -> list[dict]:
    """Per weight tensor: bytes and rows the ops read (union over the run), and reads per pass.
    `tensors` maps name -> {"rows", "row_bytes", "nbytes", "type"}."""
    touched = rows_read(events)
    reads: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("tensor"):
            reads[e["tensor"]] += e["weight_bytes"]
    out = []
    for name, t in tensors.items():
        rows = touched.get(name, set())
        n_rows = t["rows"] if rows is None else len(rows) if name in touched else 0
        out.append({"tensor": name, "type": t["type"], "nbytes": t["nbytes"], "rows_touched": n_rows,
                    "rows": t["rows"], "touched_bytes": n_rows * t["row_bytes"], "bytes_read": reads.get(name, 0)})
    return out


def format_table(rows: list[dict], limit: int | None = None, floatfmt: str = ".2f") -> str:
    """A markdown table."""
    rows = rows[:limit] if limit else rows
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    fmt = lambda v: format(v, floatfmt) if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def touch_layers(events: list[dict], tensors: dict[str, dict], samples: list[dict], page: int,
                 faults_per_page: dict | None = None) -> dict:
    """The three touch layers side by side, per tensor and in total.

    logical: bytes of the rows the ops read (and the pages holding them);
    mapped: bytes of the tensor's pages present in this process at the end of the run,
    and how many of those the run mapped (present at the end, not at the start);
    cached: bytes of the tensor's pages in the page cache at the end.
    `samples` are residency snapshots with bool page masks ("mapped", "cached")."""
    import numpy as np

    from .residency import rows_to_pages

    logical = {r["tensor"]: r for r in logical_touch(events, tensors)}
    rows_by_tensor = rows_read(events)
    first, last = (samples[0], samples[-1]) if samples else (None, None)
    n_pages = len(last["mapped"]) if last else 0
    out, tot = [], {"logical_bytes": 0, "logical_page_bytes": 0, "mapped_bytes": 0, "newly_mapped_bytes": 0,
                    "cached_bytes": 0, "nbytes": 0}
    all_logical = np.zeros(n_pages, bool)  # union: neighbouring tensors can share a page
    for name, t in tensors.items():
        lo = logical[name]
        row = {"tensor": name, "type": t["type"], "nbytes": t["nbytes"], "logical_bytes": lo["touched_bytes"]}
        if last is not None:
            sl = slice(t["offset"] // page, -(-(t["offset"] + t["nbytes"]) // page))
            if name in rows_by_tensor:
                rows = rows_by_tensor[name]
                lp = rows_to_pages(t["offset"], t["row_bytes"], None if rows is None else np.fromiter(rows, np.int64),
                                   t["rows"], n_pages)
                row["logical_page_bytes"] = int(lp.sum()) * page
                all_logical |= lp
            else:
                row["logical_page_bytes"] = 0
            row["mapped_bytes"] = int(last["mapped"][sl].sum()) * page
            row["newly_mapped_bytes"] = int((last["mapped"][sl] & ~first["mapped"][sl]).sum()) * page
            row["cached_bytes"] = int(last["cached"][sl].sum()) * page
        for k in tot:
            tot[k] += row.get(k, 0)
        out.append(row)
    if last is not None:
        tot["logical_page_bytes"] = int(all_logical.sum()) * page
    return {"tensors": out, "total": tot, "page_size": page, "fault_around": faults_per_page or {}}


def diff(a_events: list[dict], b_events: list[dict], by: str = "op", phase: str | None = None) -> list[dict]:
    """Two profiles side by side, group by group: time per occurrence in each, ratio b/a."""
    ta = {r[by]: r for r in table(a_events, by, phase)}
    tb = {r[by]: r for r in table(b_events, by, phase)}
    rows = []
    for k in list(ta) + [k for k in tb if k not in ta]:
        ra, rb = ta.get(k), tb.get(k)
        per = lambda r: r["wall_ms"] / r["count"] if r else float("nan")
        rows.append({by: k, "count_a": ra["count"] if ra else 0, "count_b": rb["count"] if rb else 0,
                     "ms_each_a": per(ra), "ms_each_b": per(rb),
                     "ratio_b_over_a": per(rb) / per(ra) if ra and rb and per(ra) else float("nan"),
                     "weight_MB_a": ra["weight_MB"] if ra else 0.0, "weight_MB_b": rb["weight_MB"] if rb else 0.0})
    return rows
