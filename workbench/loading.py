"""Load strategies and the load report.

    read            copy the whole file into anonymous memory (one read, or N threads
                    reading tensor ranges in parallel)
    mmap            map lazily: pages fault in when the forward first reads them
    mmap+populate   map with MAP_POPULATE: the kernel faults every page in up front
    mmap+willneed   map, then madvise(MADV_WILLNEED): readahead of the whole file starts
    mmap+touch      map, then N threads read one byte per page of each tensor (the
                    "parallel tensor loading" question for mmap)

`load_file(path, strategy, threads)` returns the parsed GGUFFile and a LoadReport: a
per-tensor timeline (start, end, bytes, faults) where tensors are loaded one by one,
page-cache residency and RSS (anonymous vs file-backed) sampled over time by a
background thread, and the total. `trial(...)` adds time to first token and runs in a
fresh process from `load_bench` so every trial starts clean.
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from .gguf import GGUFFile, open_gguf, parse
from .instrument.residency import PAGE, cached_pages, evict, mapping_span, present_pages

STRATEGIES = ("read", "mmap", "mmap+populate", "mmap+willneed", "mmap+touch")
_WHO = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def rss() -> dict:
    """This process's resident memory in bytes, split as the kernel reports it: anonymous,
    file-backed, total, and the peak total so far (VmHWM)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return {"anon": out.get("RssAnon", 0), "file": out.get("RssFile", 0), "total": out.get("VmRSS", 0),
            "peak": out.get("VmHWM", 0)}


@dataclass
class LoadReport:
    strategy: str
    threads: int
    cold: bool
    file_bytes: int
    cached_after_evict: int | None = None  # bytes the eviction could not drop (mapped elsewhere)
    seconds: float = 0.0  # until the strategy returned (file parsed, data loaded as it loads it)
    first_token_seconds: float | None = None  # load + one forward pass of one token
    tensors: list[dict] = field(default_factory=list)  # name, start, end (s), bytes, minflt, majflt, thread
    samples: list[dict] = field(default_factory=list)  # t (s), cached_bytes, mapped_bytes, rss anon/file
    faults: dict = field(default_factory=dict)
    then_seconds: float | None = None  # the follow-up (model build + first token) after the load
    faults_after_load: dict = field(default_factory=dict)  # faults during that follow-up
    weight_cache: dict = field(default_factory=dict)  # mode, seconds, bytes, store (the f32 cache's cost)

    def to_dict(self) -> dict:
        return asdict(self)


class _Sampler(threading.Thread):
    """Samples page-cache residency, mapped pages and RSS every `interval` seconds."""

    def __init__(self, path: str, t0: float, interval: float = 0.005):
        super().__init__(daemon=True)
        self.t0, self.interval, self.out = t0, interval, []
        self._stop_ev = threading.Event()
        fd = os.open(path, os.O_RDONLY)
        try:
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # our own probe mapping, never read
        finally:
            os.close(fd)
        self._span = mapping_span(self._mm)
        self.mapping = None  # set to the model's (addr, length) once it is mapped

    def snap(self):
        r = rss()
        s = {"t": time.perf_counter() - self.t0, "cached_bytes": int(cached_pages(*self._span).sum()) * PAGE,
             "rss_anon": r["anon"], "rss_file": r["file"]}
        if self.mapping is not None:
            s["mapped_bytes"] = int(present_pages(*self.mapping).sum()) * PAGE
        self.out.append(s)

    def run(self):
        while not self._stop_ev.is_set():
            self.snap()
            self._stop_ev.wait(self.interval)

    def stop(self):
        self._stop_ev.set()
        self.join()
        self.snap()


def _timed_tensor_pass(g: GGUFFile, threads: int, work, t0: float) -> list[dict]:
    """Run `work(tensor)` for every tensor on a pool of `threads`; one timeline row each."""

    def one(t):
        r0 = resource.getrusage(_WHO)
        s = time.perf_counter()
        work(t)
        e = time.perf_counter()
        r1 = resource.getrusage(_WHO)
        return {"name": t.name, "start": s - t0, "end": e - t0, "bytes": t.nbytes, "thread": threading.get_ident(),
                "minflt": r1.ru_minflt - r0.ru_minflt, "majflt": r1.ru_majflt - r0.ru_majflt}

    ts = sorted(g.tensors.values(), key=lambda t: t.offset)
    if threads <= 1:
        return [one(t) for t in ts]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, ts))


def _touch_pages(t) -> None:
    # numpy reads one byte per page: a strided sum touches every page of the tensor
    t.data.reshape(-1)[::PAGE].sum()


def load_file(path: str | os.PathLike, strategy: str = "mmap", threads: int = 1, cold: bool = False,
              sample: bool = True, then=None) -> tuple[GGUFFile, LoadReport]:
    """Load with `strategy`; `then(g)`, if given, runs after the load while residency and RSS
    are still sampled (e.g. build the model and compute the first token: with mmap, that
    is when the pages fault in), and its duration is reported as `then_seconds`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown load strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    path = os.fspath(path)
    still_cached = evict(path) if cold else None
    size = os.path.getsize(path)
    rep = LoadReport(strategy, threads, cold, size, cached_after_evict=still_cached)
    t0 = time.perf_counter()
    sampler = _Sampler(path, t0) if sample else None
    if sampler:
        sampler.start()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    if strategy == "read":
        g = _load_read(path, size, threads, rep, t0)
    else:
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if strategy == "mmap+populate" else 0)
        g = open_gguf(path) if flags == mmap.MAP_SHARED else _open_with_flags(path, flags)
        if sampler:
            sampler.mapping = mapping_span(g.mapping)
        if strategy == "mmap+willneed":
            g.mapping.madvise(mmap.MADV_WILLNEED)
        elif strategy == "mmap+touch":
            rep.tensors = _timed_tensor_pass(g, threads, _touch_pages, t0)
    rep.seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    rep.faults = {"minor": r1.ru_minflt - r0.ru_minflt, "major": r1.ru_majflt - r0.ru_majflt}
    if then is not None:
        try:
            then(g)
        finally:
            rep.then_seconds = time.perf_counter() - t0 - rep.seconds
            r2 = resource.getrusage(resource.RUSAGE_SELF)
            rep.faults_after_load = {"minor": r2.ru_minflt - r1.ru_minflt, "major": r2.ru_majflt - r1.ru_majflt}
    if sampler:
        sampler.stop()
        rep.samples = sampler.out
        sampler._mm.close()
    return g, rep


def _open_with_flags(path: str, flags: int) -> GGUFFile:
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ)
        g = parse(mm, path)
    except BaseException:
        os.close(fd)
        raise
    st = os.fstat(fd)
    g._mm, g._fd, g.file_size, g.mtime_ns = mm, fd, st.st_size, st.st_mtime_ns
    return g


def _load_read(path: str, size: int, threads: int, rep: LoadReport, t0: float) -> GGUFFile:
    """Copy the file into anonymous memory: learn the layout from the header (parsed on a
    short-lived mapping), then read the header and every tensor range, in parallel."""
    with open_gguf(path) as layout:
        data_offset = layout.data_offset
    buf = np.empty(size, np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        _pread_into(fd, buf, 0, data_offset)
        g = parse(buf, path)  # views of buf; tensor data arrives below
        rep.tensors = _timed_tensor_pass(g, threads, lambda t: _pread_into(fd, buf, t.offset, t.nbytes), t0)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    g.file_size, g.mtime_ns = st.st_size, st.st_mtime_ns
    return g


def _pread_into(fd: int, buf: np.ndarray, offset: int, n: int, chunk: int = 1 << 24) -> None:
    mv = memoryview(buf)
    done = 0
    while done < n:
        k = os.preadv(fd, [mv[offset + done : offset + min(n, done + chunk)]], offset + done)
        if k <= 0:
            raise OSError(f"short read at byte {offset + done}")
        done += k


def trial(model: str, strategy: str, threads: int, cold: bool, weight_cache: str = "none") -> dict:
    """One load in this process: load, build the model, one token; the report as a dict."""
    from .models import resolve

    from .model import load

    path = str(resolve(model))
    built = {}
    if cold:  # numpy's stored float32 cache leaves the page cache too (load_file evicts the model)
        from .f32_store import files_for
        from .instrument.residency import evict

        for p in files_for(path):
            evict(p)

    def first_token(g):
        m = built["model"] = load(g, weight_cache=weight_cache)
        m.forward(m.new_state(4), [1])

    t0 = time.perf_counter()
    g, rep = load_file(path, strategy, threads, cold, then=first_token)
    rep.first_token_seconds = time.perf_counter() - t0
    m = built["model"]
    info = getattr(m.ops.backend, "cache_info", lambda: {"bytes": 0})()
    rep.weight_cache = {"mode": weight_cache, "seconds": m.load_seconds.get("backend_prepare", 0.0),
                        "bytes": info["bytes"], "store": info.get("store")}
    d = rep.to_dict()
    d["rss_after_first_token"] = rss()
    m.close()
    return d


def load_bench(model: str, strategies=STRATEGIES, threads=(1,), cold=True, warm=True, repeat: int = 1,
               out: str | None = None, log=print) -> dict:
    """Every strategy x threads x (cold, warm), each trial in a fresh process."""
    from . import atomic
    from .models import resolve
    from .profile import machine_info

    path = str(resolve(model))
    runs = []
    for strategy in strategies:
        for n in threads:
            if strategy in ("mmap", "mmap+populate", "mmap+willneed") and n != threads[0]:
                continue  # no tensor pass: threads do not apply
            for is_cold in [c for c, on in ((True, cold), (False, warm)) if on]:
                for _ in range(repeat):
                    cmd = [sys.executable, "-m", "workbench", "load-trial", path, "--strategy", strategy,
                           "--threads", str(n)] + (["--cold"] if is_cold else [])
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    if r.returncode != 0:
                        raise RuntimeError(f"load trial {strategy} failed: {r.stderr.strip()[-500:]}")
                    d = json.loads(r.stdout)
                    runs.append(d)
                    log(f"{strategy:14s} threads={n} {'cold' if is_cold else 'warm'}: load {d['seconds'] * 1e3:7.1f} ms, "
                        f"first token {d['first_token_seconds'] * 1e3:7.1f} ms, faults {d['faults']['minor']} minor / "
                        f"{d['faults']['major']} major, RSS anon {d['rss_after_first_token']['anon'] / 1e6:.0f} MB, "
                        f"file {d['rss_after_first_token']['file'] / 1e6:.0f} MB")
    report = {"model": os.path.basename(path), "machine": machine_info(), "runs": runs}
    if out:
        atomic.write_json(out, report)
    return report


__all__ = ["STRATEGIES", "LoadReport", "load_file", "load_bench", "trial", "rss"]
