"""Benchmark: the workbench's backends beside llama.cpp, in one run, interleaved.

    python -m workbench bench smollm2 --backends numpy --peer llama.cpp --repeat 3 --out bench.json

For each engine (our backends, then the peer through llama-cpp-python) and each workload
(prompt processing ppN: one batched pass of N tokens; generation tgN: N single-token
steps after a short prompt) the runs are interleaved A B A B so machine drift cancels.
Warm-up runs are excluded. The report has medians with min/max, run counts, ratios to
the peer, the machine's measured memory bandwidth and each engine's fraction of the
bandwidth bound for the bytes one generated token must read; for prompt processing, the
fraction of the machine's measured float32 GEMM peak that the workload's FLOPs reach.
Load to first token (cold: file evicted from the page cache first; warm) and the peak RSS
are measured per engine in fresh processes (`first_token_trial`), interleaved too.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from . import atomic
from .profile import machine_info


def memory_bandwidth(nbytes: int = 1 << 28, repeat: int = 5, threads: int | None = None) -> dict:
    """STREAM-like bandwidth of an array far larger than the caches, GB/s: read (a sum) by one
    thread and by `threads` threads each summing a part (numpy releases the GIL), and copy.
    `read_GBps` is the better of the two reads: the bound no engine can beat."""
    from concurrent.futures import ThreadPoolExecutor

    threads = threads or len(os.sched_getaffinity(0))
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    parts = np.array_split(a, threads)
    reads, par_reads, copies = [], [], []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeat):
            reads.append(nbytes / _timed(a.sum) / 1e9)
            par_reads.append(nbytes / _timed(lambda: list(pool.map(np.sum, parts))) / 1e9)
            copies.append(2 * nbytes / _timed(lambda: np.copyto(b, a)) / 1e9)
    return {"read_GBps": max(reads + par_reads), "read_1_thread_GBps": max(reads),
            f"read_{threads}_threads_GBps": max(par_reads), "copy_GBps": max(copies), "bytes": nbytes,
            "repeat": repeat, "threads": threads}


def gemm_peak(n: int = 1024, repeat: int = 5) -> dict:
    """float32 GEMM FLOP/s of BLAS on an n x n x n product: the best of `repeat` runs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: threads started, pages touched
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return {"GFLOPs": 2 * n**3 / best / 1e9, "n": n, "repeat": repeat}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def prompt_flops(path: str, ns) -> dict[int, int]:
    """FLOPs of one prompt pass of n tokens (for each n in `ns`) that returns the last
    position's logits: every layer matmul for n tokens, the causal attention products
    (q k^T and p v), and the output matmul for one token. Norms, rope and activations are
    left out (well under 1 %)."""
    from .config import Config
    from .gguf import open_gguf

    g = open_gguf(path)
    try:
        cfg = Config.from_gguf(g)
        mats = [t for name, t in g.tensors.items() if name.startswith("blk.") and len(t.dims) == 2]
        out = g.tensors["output.weight" if "output.weight" in g.tensors else "token_embd.weight"]
    finally:
        g.close()
    per_token = sum(2 * t.dims[0] * t.dims[1] for t in mats)
    return {n: per_token * n + cfg.n_layer * 4 * cfg.n_head * cfg.head_dim * n * (n + 1) // 2
            + 2 * out.dims[0] * out.dims[1] for n in ns}


TRIAL_TEXT = "The mapped weights fault in as the first token is computed."  # 12 tokens (SmolLM2), 13 (Gemma 3)


def _import_backend(engine: str) -> None:
    """Import the backend module `engine` names and the library it needs (not started)."""
    if engine == "opencl":
        from kernels.base import BackendError
        from kernels.opencl_backend import _cl

        try:
            _cl()   # pyopencl (and its memory pool); the load reports it if it is missing
        except BackendError:
            pass
    elif engine == "numexpr":
        import kernels.numexpr_backend  # noqa: F401  (imports numexpr)
    elif engine == "numpy":
        import kernels.numpy_backend  # noqa: F401


def first_token_trial(model_path: str, engine: str, weight_cache: str = "f32", cold: bool = False,
                      threads: int = 2) -> dict:
    """In this (fresh) process: load `engine`, tokenize TRIAL_TEXT with the model's own
    vocabulary and evaluate it up to its first sampled token. Times from just before the load
    to the argmax; `cold` evicts the file from the page cache first. Peak RSS is the process's
    VmHWM; `prompt_tokens` the prompt's length (the same ids for every engine).

    Imports are done before the clock starts, the same for every engine: llama.cpp's
    `import llama_cpp` (which loads its shared library), and for ours the backend module the
    load will use and what it imports (pyopencl for OpenCL, numexpr), as a long-lived
    process or notebook would have them already."""
    from .instrument.residency import evict
    from .loading import rss

    if engine == "llama.cpp":
        import llama_cpp
        from llama_cpp import Llama
    else:
        from .model import load

        _import_backend(engine)
    still = None
    if cold:  # nothing of the model in the page cache: the file, and numpy's stored f32 cache
        from .f32_store import files_for

        still = evict(model_path) + sum(evict(p) for p in files_for(model_path))
    t0 = time.perf_counter()
    if engine == "llama.cpp":
        llm = Llama(model_path=model_path, n_ctx=256, n_batch=512, n_threads=threads, n_threads_batch=threads,
                    verbose=False)
        t1 = time.perf_counter()
        ids = llm.tokenize(TRIAL_TEXT.encode(), add_bos=True, special=True)
        llm.eval(ids)
        row = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        int(np.argmax(np.ctypeslib.as_array(row, shape=(llm.n_vocab(),))))
    else:
        m = load(model_path, backend=engine, weight_cache=weight_cache)
        t1 = time.perf_counter()
        ids = m.tokenizer.encode(TRIAL_TEXT)
        int(m.forward(m.new_state(64), ids)[-1].argmax())
    t2 = time.perf_counter()
    return {"engine": engine, "cold": cold, "cached_after_evict": still, "load_seconds": t1 - t0,
            "first_token_seconds": t2 - t0, "prompt_tokens": len(ids), "rss": rss()}


def load_trials(model_path: str, engines: list[tuple[str, str, str]], repeat: int, cold: bool = True,
                warm: bool = True, threads: int = 2, log=print) -> dict:
    """First-token trials for each (name, backend, weight cache), each in a fresh process,
    interleaved over engines; medians per engine and temperature. One untimed trial per
    engine first (a first load ever also writes numpy's stored f32 cache). Warm: the model
    file and that store are read into the page cache before each trial (a cold trial before
    evicted them); cold: both are evicted (first_token_trial)."""
    import json
    import subprocess
    import sys

    from .f32_store import files_for
    from .instrument.residency import warm as read_into_cache

    def trial(name, backend, wc, is_cold):
        if not is_cold:
            for p in [model_path, *files_for(model_path)]:
                read_into_cache(p)
        cmd = [sys.executable, "-m", "workbench", "first-token-trial", model_path, "--engine", backend,
               "--weight-cache", wc, "--threads", str(threads)] + (["--cold"] if is_cold else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"first-token trial of {name} failed: {r.stderr.strip()[-500:]}")
        return json.loads(r.stdout)

    for engine in engines:  # warm-up, not counted
        trial(*engine, False)
    runs: dict = {}
    temps = [c for c, on in ((True, cold), (False, warm)) if on]
    for _ in range(repeat):
        for is_cold in temps:
            for name, backend, wc in engines:
                runs.setdefault(name, {}).setdefault("cold" if is_cold else "warm", []).append(
                    trial(name, backend, wc, is_cold))
    out = {}
    for name, by_temp in runs.items():
        for temp, rs in by_temp.items():
            ft = [x["first_token_seconds"] for x in rs]
            out.setdefault(name, {})[temp] = {
                "median_s": statistics.median(ft), "min_s": min(ft), "max_s": max(ft), "runs": len(rs),
                "load_median_s": statistics.median(x["load_seconds"] for x in rs),
                "peak_rss_median": statistics.median(x["rss"]["peak"] for x in rs),
                "cached_after_evict_max": max((x["cached_after_evict"] or 0) for x in rs),
                "prompt_tokens": sorted({x["prompt_tokens"] for x in rs})}
            log(f"first token {temp:4s} {name:18s} median {1e3 * out[name][temp]['median_s']:7.1f} ms "
                f"(min {1e3 * min(ft):.1f}, max {1e3 * max(ft):.1f}, {len(rs)} runs), peak RSS "
                f"{out[name][temp]['peak_rss_median'] / 1e6:.0f} MB")
    lengths = {name: t["prompt_tokens"] for name, by_temp in out.items() for t in by_temp.values()}
    if len({tuple(v) for v in lengths.values()}) > 1:
        raise RuntimeError(f"the engines tokenized the trial prompt to different lengths: {lengths}")
    return out


@dataclass
class Engine:
    name: str
    run_pp: callable  # (tokens) -> seconds
    run_tg: callable  # (prompt tokens, n) -> seconds for n-1 steps after the first
    bytes_per_token: int
    info: dict = field(default_factory=dict)
    close: callable = lambda: None
    n_vocab: int = 1 << 62


def our_engine(model_path: str, backend: str, weight_cache: str) -> Engine:
    from .model import load

    m = load(model_path, backend=backend, weight_cache=weight_cache)
    states = []  # one run state, reset for each run, as llama.cpp's context is (llm.reset())

    def fresh_state(n_ctx: int):
        if not states or states[0].n_ctx < n_ctx:
            states[:] = [m.new_state(n_ctx)]
        states[0].pos = 0
        return states[0]

    def run_pp(tokens):
        st = fresh_state(len(tokens))
        t = time.perf_counter()
        m.forward(st, tokens)
        return time.perf_counter() - t

    def run_tg(prompt, n):
        st = fresh_state(len(prompt) + n)
        logits = m.forward(st, prompt)[-1]
        tok = int(logits.argmax())
        t = time.perf_counter()
        for _ in range(n):
            tok = int(m.forward(st, [tok])[-1].argmax())
        return time.perf_counter() - t

    be = m.ops.backend
    matmul_weights = [t for t in m.weights.tensors() if t.cols > 0 and len(t.dims) == 2]
    if getattr(be, "cache_bytes", 0):
        per_token = be.cache_bytes
    else:
        per_token = sum(t.nbytes for t in matmul_weights)
    name = _engine_name(backend, weight_cache)
    return Engine(name, run_pp, run_tg, per_token, {"load_seconds": m.load_seconds}, m.close, m.config.n_vocab)


def _engine_name(backend: str, weight_cache: str) -> str:
    return backend + (f"+{weight_cache}-cache" if weight_cache != "none" else "")


def llama_cpp_engine(model_path: str, threads: int) -> Engine:
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise RuntimeError("the llama.cpp peer needs llama-cpp-python: pip install -e '.[peer]' "
                           "(see README: build flags)") from e
    import llama_cpp

    llm = Llama(model_path=model_path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    n_vocab = llm.n_vocab()

    def argmax_last() -> int:  # the last position's logits, as llama.cpp returns them
        row = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(row, shape=(n_vocab,))))

    def run_pp(tokens):
        llm.reset()
        t = time.perf_counter()
        llm.eval(list(tokens))
        return time.perf_counter() - t

    def run_tg(prompt, n):
        llm.reset()
        llm.eval(list(prompt))
        tok = argmax_last()
        t = time.perf_counter()
        for _ in range(n):
            llm.eval([tok])
            tok = argmax_last()
        return time.perf_counter() - t

    per_token = os.path.getsize(model_path)
    return Engine("llama.cpp", run_pp, run_tg, per_token, {"version": llama_cpp.__version__, "threads": threads},
                  lambda: llm.close() if hasattr(llm, "close") else None, n_vocab)


def run_bench(model: str, backends=("numpy",), weight_cache: str = "f32", peer: str | None = "llama.cpp",
              threads: int = 2, repeat: int = 3, pp=(64, 256), tg=(32,), out: str | None = None,
              load: str = "both", log=print) -> dict:
    from .models import resolve

    path = str(resolve(model))
    rng = np.random.default_rng(0)
    limits = [(memory_bandwidth(), gemm_peak())]  # the machine's limits, again at the end
    # the f32 weight cache is a numpy-family mode (numexpr inherits it); OpenCL reads quant blocks
    caches = {b: weight_cache if b in ("numpy", "numexpr") else "none" for b in backends}
    loads = {}
    if load in ("cold", "warm", "both"):  # first, while no engine of this process maps the file
        specs = [(_engine_name(b, caches[b]), b, caches[b]) for b in backends] + ([("llama.cpp", "llama.cpp", "none")]
                                                                                  if peer else [])
        loads = load_trials(path, specs, repeat, cold=load != "warm", warm=load != "cold", threads=threads, log=log)
    engines = [our_engine(path, b, caches[b]) for b in backends]
    if peer:
        engines.append(llama_cpp_engine(path, threads))
    ids = 1000 + rng.integers(0, 20000, size=max(pp + (16,)))  # ordinary tokens of both vocabularies
    ids %= min(e.n_vocab for e in engines)  # (a tiny test model's vocabulary is smaller)
    workloads = [(f"pp{n}", "pp", n) for n in pp] + [(f"tg{n}", "tg", n) for n in tg]
    results: dict = {e.name: {} for e in engines}
    try:
        for wname, kind, n in workloads:
            toks = [int(t) for t in ids[: n if kind == "pp" else 8]]
            runs = {e.name: [] for e in engines}
            for e in engines:  # warm-up, excluded
                e.run_pp(toks) if kind == "pp" else e.run_tg(toks, min(n, 4))
            for r in range(repeat):
                for e in engines:  # interleaved: A B A B
                    secs = e.run_pp(toks) if kind == "pp" else e.run_tg(toks, n)
                    runs[e.name].append(n / secs)
            for e in engines:
                v = runs[e.name]
                results[e.name][wname] = {"median_tps": statistics.median(v), "min_tps": min(v), "max_tps": max(v),
                                          "runs": len(v)}
                log(f"{wname:6s} {e.name:18s} median {statistics.median(v):8.1f} tok/s  "
                    f"(min {min(v):.1f}, max {max(v):.1f}, {len(v)} runs)")
    finally:
        for e in engines:
            e.close()
    limits.append((memory_bandwidth(), gemm_peak()))
    bw, peak = _best_limits(limits)
    flops = prompt_flops(path, pp)
    report = {"model": os.path.basename(path), "machine": machine_info(), "threads": threads, "repeat": repeat,
              "bandwidth": bw, "gemm_peak": peak, "prompt_flops": flops, "engines": {}, "blas": _blas_info()}
    for e in engines:
        r = {"workloads": results[e.name], "bytes_per_token": e.bytes_per_token, "info": e.info,
             "first_token": loads.get(e.name, {})}
        for wname, v in results[e.name].items():
            if wname.startswith("tg"):
                bound = bw["read_GBps"] * 1e9 / e.bytes_per_token
                v["bandwidth_bound_tps"] = bound
                v["fraction_of_bound"] = v["median_tps"] / bound
            else:  # ppN: the FLOP rate the pass reached, against the machine's GEMM peak
                n = int(wname[2:])
                v["GFLOPs"] = flops[n] * v["median_tps"] / n / 1e9
                v["fraction_of_gemm_peak"] = v["GFLOPs"] / peak["GFLOPs"]
            if peer and e.name != "llama.cpp":
                v["ratio_to_peer"] = v["median_tps"] / results["llama.cpp"][wname]["median_tps"]
        report["engines"][e.name] = r
    report["markdown"] = to_markdown(report)
    if out:
        atomic.write_json(out, report, indent=1)
    return report


def _blas_info() -> list:
    try:
        from threadpoolctl import threadpool_info

        return [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                for d in threadpool_info()]
    except ImportError:
        return []


def _best_limits(limits: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The best bandwidth and GEMM peak of several measurements (before and after the
    workloads: a shared machine's neighbours can pull one down, and a bound lower than what an
    engine reached means nothing), each with every measurement's figure beside it."""
    bw = max((b for b, _ in limits), key=lambda b: b["read_GBps"])
    peak = max((p for _, p in limits), key=lambda p: p["GFLOPs"])
    return (dict(bw, read_GBps_measured=[b["read_GBps"] for b, _ in limits]),
            dict(peak, GFLOPs_measured=[p["GFLOPs"] for _, p in limits]))


def to_markdown(report: dict) -> str:
    bw, peak = report["bandwidth"], report["gemm_peak"]

    def measured(key: str, d: dict, f: str) -> str:  # the figures a limit is the best of
        runs = d.get(key, ())
        return "" if len(runs) < 2 else " (best of " + " / ".join(format(x, f) for x in runs) + ", before / after)"

    lines = [f"Model {report['model']}; {report['machine']['cpu']}, {report['threads']} threads, "
             f"{report['repeat']} interleaved runs per cell (median, min-max); memory read bandwidth "
             f"{bw['read_GBps']:.1f} GB/s{measured('read_GBps_measured', bw, '.1f')}; float32 GEMM peak "
             f"{peak['GFLOPs']:.0f} GFLOP/s{measured('GFLOPs_measured', peak, '.0f')}; malloc: "
             f"{report['machine'].get('malloc', {}).get('allocator', 'system')} (workbench.heap).",
             "", "| engine | workload | tok/s median | min-max | vs llama.cpp | of the bound |", "|---|---|---|---|---|---|"]
    for name, e in report["engines"].items():
        for w, v in e["workloads"].items():
            ratio = f"{v['ratio_to_peer']:.2f}x" if "ratio_to_peer" in v else "-"
            if "fraction_of_bound" in v:
                frac = f"{100 * v['fraction_of_bound']:.0f} % of {v['bandwidth_bound_tps']:.0f} tok/s (bandwidth)"
            else:
                frac = f"{100 * v['fraction_of_gemm_peak']:.0f} % ({v['GFLOPs']:.0f} GFLOP/s of GEMM peak)"
            lines.append(f"| {name} | {w} | {v['median_tps']:.1f} | {v['min_tps']:.1f}-{v['max_tps']:.1f} | {ratio} | {frac} |")
    firsts = {name: e["first_token"] for name, e in report["engines"].items() if e.get("first_token")}
    if firsts:
        lines += ["", "Load to first token (a one-sentence prompt, tokenized), each run a fresh process; median (min-max), peak RSS:", "",
                  "| engine | warm | cold | peak RSS |", "|---|---|---|---|"]
        for name, ft in firsts.items():
            cell = {t: (f"{1e3 * ft[t]['median_s']:.0f} ms ({1e3 * ft[t]['min_s']:.0f}-{1e3 * ft[t]['max_s']:.0f})"
                        if t in ft else "-") for t in ("warm", "cold")}
            rss = max(v["peak_rss_median"] for v in ft.values())
            lines.append(f"| {name} | {cell['warm']} | {cell['cold']} | {rss / 1e6:.0f} MB |")
    return "\n".join(lines)


OVERHEAD_MODES = {
    # name: recorder settings (None: no recorder attached; "raw": the dispatch's recorder check bypassed)
    "no recorder (raw dispatch)": "raw",
    "recording off": None,
    "timing only": dict(faults=False, touch=False, residency=False),
    # backends that fuse ops do not while recording (each op's time is its own); this mode
    # keeps them fused (`fuse=True`), so it shows the recorder's cost alone
    "timing only, fused ops kept": dict(faults=False, touch=False, residency=False, fuse=True),
    "timing + faults": dict(faults=True, touch=False, residency=False),
    "full (faults, logical touch, mapped/cached per pass)": dict(faults=True, touch=True, residency=True),
}


def run_overhead(model: str, n: int = 16, repeat: int = 5, weight_cache: str = "f32", log=print) -> dict:
    """Decode tokens/s with each recorder setting, interleaved, medians: what recording costs."""
    from .instrument.recorder import record
    from .model import load

    m = load(model, weight_cache=weight_cache)
    ops = m.ops
    plain_run = ops._run

    def decode(mode) -> float:
        st = m.new_state(n + 8)
        m.forward(st, [1, 2, 3, 4])
        if mode == "raw":
            ops._run = lambda op, be, fn, args, *rest, **kw: fn(*args)
        try:
            if isinstance(mode, dict):
                settings = dict(mode)
                fuse = settings.pop("fuse", None)
                fusing = [b for b in ops.backends if hasattr(b, "fuse")]
                was = [b.fuse for b in fusing]
                for b in fusing:
                    b.fuse = fuse
                try:
                    with record(m, **settings) as rec:
                        t = time.perf_counter()
                        for i in range(n):
                            m.forward(st, [5 + i])
                        secs = time.perf_counter() - t
                finally:
                    for b, f in zip(fusing, was):
                        b.fuse = f
                own[str(mode)].append((rec.overhead_ns / 1e9 / secs, rec.overhead_ns / max(1, len(rec._raw))))
                return n / secs
            t = time.perf_counter()
            for i in range(n):
                m.forward(st, [5 + i])
            return n / (time.perf_counter() - t)
        finally:
            ops._run = plain_run

    runs = {k: [] for k in OVERHEAD_MODES}
    own = {str(mode): [] for mode in OVERHEAD_MODES.values() if isinstance(mode, dict)}  # (share, ns per op)
    try:
        for k, mode in OVERHEAD_MODES.items():  # warm-up
            decode(mode)
        for _ in range(repeat):
            for k, mode in OVERHEAD_MODES.items():
                runs[k].append(decode(mode))
    finally:
        m.close()
    # two estimators: medians, and the best runs (noise on a shared machine only adds time,
    # so the fastest run of each mode is the least disturbed one)
    base, best = statistics.median(runs["recording off"]), max(runs["recording off"])
    out = {}
    for k, v in runs.items():
        med = statistics.median(v)
        out[k] = {"median_tps": med, "min_tps": min(v), "max_tps": max(v), "runs": len(v),
                  "slowdown_vs_off": base / med - 1.0, "slowdown_vs_off_best": best / max(v) - 1.0}
        mine = own.get(str(OVERHEAD_MODES[k]))
        note = ""
        if mine:  # the recorder's own bookkeeping, timed by itself (excludes the timed ops)
            out[k]["self_measured_share"] = statistics.median(x[0] for x in mine)
            out[k]["self_measured_ns_per_op"] = statistics.median(x[1] for x in mine)
            note = (f"; its own bookkeeping {out[k]['self_measured_ns_per_op'] / 1e3:.1f} us/op = "
                    f"{100 * out[k]['self_measured_share']:.1f} % of the run")
        log(f"{k:55s} {med:7.2f} tok/s (min {min(v):.2f}, max {max(v):.2f}, {len(v)} runs)  "
            f"{100 * (base / med - 1):+.1f} % vs off (best runs: {100 * (best / max(v) - 1):+.1f} %){note}")
    return {"model": model, "n_tokens": n, "repeat": repeat, "weight_cache": weight_cache, "modes": out,
            "machine": machine_info()}


ELEMENTWISE = ("rms_norm", "rope", "silu_mul", "gelu_mul", "add", "scale", "softmax")
OP_BENCH_BACKENDS = ("numpy", "numexpr", "numexpr-forced", "opencl")


def _op_bench_backend(spec: str):
    """A backend by name; "numexpr-forced" is numexpr with every size sent to numexpr."""
    from .backends import make_backend

    if spec == "numexpr-forced":
        from kernels.numexpr_backend import NumexprBackend

        be = NumexprBackend(min_size=0)
        be.name = "numexpr-forced"
        return be
    return make_backend(spec)


def run_op_bench(backends=("numpy", "numexpr", "numexpr-forced"), tokens=(1, 64, 256), width: int = 1536,
                 heads: int = 9, head_dim: int = 64, repeat: int = 21, log=print) -> dict:
    """Median time of each elementwise op per backend at decode and prefill sizes (inputs
    shaped like SmolLM2's: FFN width 1536, 9 heads of 64), interleaved; ratio to the first.
    "numexpr" runs as configured (its per-op size rule picks numexpr or numpy's code; the
    row's `numexpr_path` says which); "numexpr-forced" runs numexpr at every size."""
    from kernels.base import ROPE_NORM

    bes = [_op_bench_backend(b) for b in backends]
    rng = np.random.default_rng(0)
    results = []
    for n in tokens:
        x = rng.standard_normal((n, width)).astype(np.float32)
        y = rng.standard_normal((n, width)).astype(np.float32)
        w = rng.standard_normal(width).astype(np.float32)
        q = rng.standard_normal((n, heads, head_dim)).astype(np.float32)
        pos = np.arange(n)
        calls = {
            "rms_norm": lambda b: b.rms_norm(x, w, 1e-5), "rope": lambda b: b.rope(q, pos, 1e5, ROPE_NORM, head_dim),
            "silu_mul": lambda b: b.silu_mul(x, y), "gelu_mul": lambda b: b.gelu_mul(x, y),
            "add": lambda b: b.add(x, y), "scale": lambda b: b.scale(x, 0.5), "softmax": lambda b: b.softmax(x),
        }
        for op in ELEMENTWISE:
            times = {b.name: [] for b in bes}
            for b in bes:
                calls[op](b)  # warm-up
            for _ in range(repeat):
                for b in bes:  # interleaved: A B C A B C
                    t = time.perf_counter_ns()
                    calls[op](b)
                    times[b.name].append(time.perf_counter_ns() - t)
            med = {k: statistics.median(v) / 1e3 for k, v in times.items()}
            row = {"op": op, "tokens": n, **{f"{k}_us": v for k, v in med.items()}}
            for b in bes[1:]:
                row[f"{b.name}_speedup"] = med[bes[0].name] / med[b.name]
            for b in bes:
                if b.name == "numexpr":
                    size = (q if op == "rope" else x).size
                    row["numexpr_path"] = "numexpr" if b.uses_numexpr(op, size) else "numpy"
            results.append(row)
            log("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    for b in bes:
        b.close()
    import numexpr

    return {"backends": list(backends), "repeat": repeat, "rows": results, "machine": machine_info(),
            "numexpr": {"version": numexpr.__version__, "threads": numexpr.get_num_threads(),
                        "vml": bool(numexpr.use_vml)}}
