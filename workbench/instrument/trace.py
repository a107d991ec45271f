"""Chrome trace / Perfetto JSON from a profile: `X` events for ops nested under one span
per forward pass, `C` counter tracks for page faults."""

from __future__ import annotations

from .analysis import token_spans


def chrome_trace(events: list[dict], pid: int = 1, tid: int = 1) -> dict:
    out = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": "workbench"}},
           {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": "host ops"}},
           {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid + 1, "args": {"name": "device kernels"}}]
    for s in token_spans(events):
        label = f"prefill x{s['n_tokens']}" if s["phase"] == "prefill" else f"decode pos {s['pos']}"
        out.append({"name": label, "cat": s["phase"], "ph": "X", "pid": pid, "tid": tid,
                    "ts": s["start_ns"] / 1e3, "dur": (s["end_ns"] - s["start_ns"]) / 1e3,
                    "args": {"pos": s["pos"], "ops": s["ops"]}})
    minflt = majflt = 0
    for e in events:
        name = e["op"] if e.get("layer") is None else f"{e['op']} L{e['layer']}"
        out.append({"name": name, "cat": e["backend"], "ph": "X", "pid": pid, "tid": tid,
                    "ts": e["start_ns"] / 1e3, "dur": max(e["wall_ns"], 1) / 1e3,
                    "args": {k: e[k] for k in ("tensor", "phase", "pos", "out_shape", "weight_bytes", "flops",
                                               "cpu_ns", "minflt", "majflt", "fallback")}})
        kernels = e.get("kernels") or []
        for k, start, end in kernels:  # device track; device clock aligned to the op's host start
            out.append({"name": k, "cat": "device", "ph": "X", "pid": pid, "tid": tid + 1,
                        "ts": (e["start_ns"] + start - kernels[0][1]) / 1e3, "dur": max(end - start, 1) / 1e3,
                        "args": {"op": e["op"], "layer": e.get("layer")}})
        if e["minflt"] >= 0:
            minflt += e["minflt"]
            majflt += e["majflt"]
            out.append({"name": "page faults", "ph": "C", "pid": pid, "ts": (e["start_ns"] + e["wall_ns"]) / 1e3,
                        "args": {"minor": minflt, "major": majflt}})
    # sort by time, and spans before the ops they contain
    out[3:] = sorted(out[3:], key=lambda ev: (ev["ts"], -ev.get("dur", 0)))
    return {"traceEvents": out, "displayTimeUnit": "ms"}
