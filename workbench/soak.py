"""Soak: repeated generate + profile in one process for a long time, watching for leaks.

Each loaded model (one per model x backend) runs, round after round, a generation of
`n_gen` tokens and a recorded profile of `n_prof` tokens (every `every`-th round with the
page-residency sampler on and the profile saved to disk, which also exercises atomic_dir).
After each round the process's resident memory (anonymous and file-backed, from
/proc/self/status), the live Python objects and each backend's `resources()` (OpenCL buffers
and pool blocks) are sampled. Every round builds a fresh KV cache and drops it, so nothing
should grow: the report states anonymous RSS after the first round (warm: weights cached,
kernels built), after ten, at the end, the growth between, and the resource counts first
and last.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

from .loading import rss

PROMPT = "The three most useful facts about the Moon are"


def memory() -> dict:
    """RSS of this process in MB: anonymous, file-backed, and the peak (VmHWM)."""
    r = rss()
    return {"anon_mb": r["anon"] / 2**20, "file_mb": r["file"] / 2**20, "peak_mb": r["peak"] / 2**20}


def _resources(model) -> dict:
    out = {}
    for b in model.ops.backends:
        out.update({f"{b.name}.{k}": v for k, v in b.resources().items()})
    return out


def run_soak(models: list[str], backends: list[str], minutes: float, weight_cache: str = "f32",
             n_gen: int = 24, n_prof: int = 4, every: int = 5, prompt: str = PROMPT,
             log=print) -> dict:
    """Soak for `minutes`; returns the report (samples and summary). `weight_cache` applies to
    the CPU backends; OpenCL reads the quantized blocks."""
    from .generate import generate
    from .model import load
    from .profile import run_profile

    loaded, samples, rounds = [], [], 0
    try:
        for name in models:
            for be in backends:
                wc = "none" if be == "opencl" else weight_cache
                loaded.append((f"{name}/{be}", be, wc, load(name, backend=be, weight_cache=wc)))
        t0 = time.monotonic()
        deadline = t0 + minutes * 60
        with tempfile.TemporaryDirectory(prefix="workbench-soak-") as tmp:
            while True:
                rounds += 1
                for label, be, wc, m in loaded:
                    generate(m, prompt, n=n_gen)
                    full = rounds % every == 1 or every == 1
                    run_profile(m, prompt, n=n_prof, backend=be, weight_cache=wc, residency=full,
                                out=Path(tmp, label.replace("/", "-")) if full else None)
                gc.collect()
                s = {"round": rounds, "t_s": round(time.monotonic() - t0, 1), **memory(),
                     "py_objects": len(gc.get_objects())}
                for label, *_, m in loaded:
                    s.update({f"{label}:{k}": v for k, v in _resources(m).items()})
                samples.append(s)
                if rounds in (1, 10) or rounds % 25 == 0:
                    log(f"round {rounds} at {s['t_s']:.0f} s: anon {s['anon_mb']:.1f} MB, "
                        f"file {s['file_mb']:.1f} MB, {s['py_objects']} objects")
                if time.monotonic() >= deadline:
                    break
    finally:
        for *_, m in loaded:
            m.close()
    return {"models": models, "backends": backends, "weight_cache": weight_cache, "minutes": minutes,
            "n_gen": n_gen, "n_prof": n_prof, "every": every, "pid": os.getpid(),
            "samples": samples, "summary": summarize(samples)}


def summarize(samples: list[dict]) -> dict:
    """Growth of anonymous RSS and Python objects from the first round (warm) to the last, and
    every resource count first vs last."""
    first, last = samples[0], samples[-1]
    tenth = samples[min(9, len(samples) - 1)]
    keys = [k for k in first if ":" in k]
    return {"rounds": len(samples), "seconds": last["t_s"],
            "anon_mb": {"first": first["anon_mb"], "tenth": tenth["anon_mb"], "last": last["anon_mb"],
                        "max": max(s["anon_mb"] for s in samples)},
            "anon_growth_mb": round(last["anon_mb"] - first["anon_mb"], 2),
            "anon_growth_after_tenth_mb": round(last["anon_mb"] - tenth["anon_mb"], 2),
            "file_mb": {"first": first["file_mb"], "last": last["file_mb"]},
            "py_objects": {"first": first["py_objects"], "last": last["py_objects"]},
            "resources": {k: {"first": first[k], "last": last[k], "max": max(s[k] for s in samples)}
                          for k in keys}}


def format_summary(report: dict) -> str:
    s = report["summary"]
    a = s["anon_mb"]
    lines = [f"soak: {', '.join(report['models'])} x {', '.join(report['backends'])}, {s['rounds']} rounds "
             f"in {s['seconds']:.0f} s (each: generate {report['n_gen']} + profile {report['n_prof']} per model)",
             f"anonymous RSS MB: after round 1 {a['first']:.1f}, round 10 {a['tenth']:.1f}, last {a['last']:.1f}, "
             f"max {a['max']:.1f} (growth {s['anon_growth_mb']:+.2f}; after round 10 {s['anon_growth_after_tenth_mb']:+.2f})",
             f"file-backed RSS MB: {s['file_mb']['first']:.1f} -> {s['file_mb']['last']:.1f}",
             f"Python objects: {s['py_objects']['first']} -> {s['py_objects']['last']}"]
    lines += [f"{k}: {v['first']} -> {v['last']} (max {v['max']})" for k, v in s["resources"].items()]
    return "\n".join(lines)
