"""The recorder: one plain event per op, nothing else. Analysis lives elsewhere.

    with workbench.record(model) as prof:
        workbench.generate(model, "Hello", n=8)
    prof.events          # list[OpEvent]

While attached, `Ops` hands every op to `Recorder.op`, which times it (wall and thread
CPU), counts this thread's page faults around it (optional), and notes which rows of
each weight it read (the logical touch map). The recorder measures its own bookkeeping
time and reports it as `overhead_ns`.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

GC_THRESHOLD_WHILE_RECORDING = 50_000
_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


@dataclass(slots=True)
class OpEvent:
    seq: int
    op: str
    layer: int | None
    tensor: str | None  # weight tensor read, if any
    backend: str
    fallback: bool  # ran on numpy because the chosen backend does not support it
    phase: str  # "prefill" / "decode"
    pos: int  # first position of the batch
    n_tokens: int
    in_shapes: list  # [shape of the activation input] (embed: the token ids)
    out_shape: list
    dtype: str
    start_ns: int  # since the recorder started
    wall_ns: int
    cpu_ns: int  # this thread's CPU time; -1 in timing-only mode (faults=False)
    weight_bytes: int  # bytes of weight data the op read (logical)
    flops: int
    minflt: int = -1  # -1: not counted
    majflt: int = -1
    rows: Any = None  # logical touch: None = all rows, else sorted unique row ids (np.ndarray)
    device_ns: int = -1  # device time of the op's kernels and copies (OpenCL profiling events); -1: none
    kernels: list = field(default_factory=list)  # [kernel, start_ns, end_ns] on the device clock

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(self.rows, np.ndarray):
            d["rows"] = self.rows.tolist()
        return d


_ndarray = np.ndarray
_now = time.perf_counter_ns
_cpu = time.thread_time_ns
_getrusage = resource.getrusage
_NO_FAULTS = (-1, -1)


@dataclass
class Recorder:
    faults: bool = True  # page faults and thread CPU time per op (4 system calls per op); off: wall time only
    touch: bool = True  # export the logical rows each op read (embedding rows are always counted)
    overhead_ns: int = 0  # the recorder's own bookkeeping time
    started_ns: int = 0
    marks: list[dict] = field(default_factory=list)  # free-form spans (tokens, phases)
    residency: Any = None  # a residency.Residency: sample mapped/cached pages per forward pass
    samples: list[dict] = field(default_factory=list)
    ops: Any = None  # the Ops this recorder is attached to
    device_timed: tuple = ()  # backends whose kernel timings (OpenCL profiling events) are read per op
    _raw: list = field(default_factory=list)  # one tuple per op; turned into OpEvents on demand
    _events: list = field(default_factory=list)
    _step: tuple = ()

    def __post_init__(self):
        self.started_ns = time.perf_counter_ns()

    def sample(self, phase: str, pos: int) -> None:
        """Snapshot the mapped and cached page masks (taken before each forward pass and at the end)."""
        t0 = time.perf_counter_ns()
        self.samples.append({"phase": phase, "pos": pos, "t_ns": t0 - self.started_ns,
                             "mapped": self.residency.mapped(), "cached": self.residency.cached()})
        self.overhead_ns += time.perf_counter_ns() - t0

    def op(self, ops, name, be, fn, args, weight, rows, flops):
        """Run one op and note it. The hot path only reads clocks and appends a tuple."""
        t_enter = _now()
        if self.residency is not None and self._step != (ops.phase, ops.pos):
            self._step = (ops.phase, ops.pos)
            self.sample(ops.phase, ops.pos)
        if self.faults:  # thread CPU time (ns clock) and this thread's faults, each side
            ru0 = _getrusage(_RUSAGE_THREAD)
            c0 = _cpu()
            t0 = _now()
            out = fn(*args)
            t1 = _now()
            cpu = _cpu() - c0
            ru1 = _getrusage(_RUSAGE_THREAD)
            flt = (ru1.ru_minflt - ru0.ru_minflt, ru1.ru_majflt - ru0.ru_majflt)
        else:  # timing only: the wall clock (a vDSO read, no system call)
            t0 = _now()
            out = fn(*args)
            t1 = _now()
            cpu, flt = -1, _NO_FAULTS
        dev = be.drain_kernel_events() if self.device_timed and be in self.device_timed else None
        if out.__class__ is _ndarray:
            out_shape, dtype = out.shape, out.dtype
        else:
            out_shape, dtype = getattr(out, "shape", ()), getattr(out, "dtype", "")
        x = args[1] if args[0] is weight else args[0]  # the activation (embed: the token ids); the
        # other inputs' shapes follow from it and the weight, and reading them all cost ~1 us an op
        self._raw.append((name, ops.layer, weight, be, ops.phase, ops.pos,
                          x.shape if x.__class__ is _ndarray else getattr(x, "shape", ()), out_shape, dtype,
                          t0, t1, cpu, flt, rows, flops, dev))
        self.overhead_ns += (_now() - t_enter) - (t1 - t0)
        return out

    @property
    def events(self) -> list[OpEvent]:
        """The recorded ops as OpEvents (built from the raw tuples on first access after new ops)."""
        start = len(self._events)
        for i, (name, layer, w, be, phase, pos, in_shape, out_shape, dtype, t0, t1, cpu, flt, rows, flops, dev) in \
                enumerate(self._raw[start:], start):
            if w is None:
                wbytes = 0
            elif rows is None:
                wbytes = w.nbytes
            else:
                rows = np.unique(rows)
                wbytes = len(rows) * w.row_bytes
            qt = getattr(w, "qtype", None)
            self._events.append(OpEvent(
                seq=i, op=name, layer=layer, tensor=getattr(w, "name", None), backend=be.name,
                fallback=self.ops.fell_back(name, qt, be) if self.ops is not None else False,
                phase=phase, pos=pos, n_tokens=int(in_shape[0]) if in_shape else 1,
                in_shapes=[list(in_shape)], out_shape=list(out_shape), dtype=str(dtype),
                start_ns=t0 - self.started_ns, wall_ns=t1 - t0, cpu_ns=cpu,
                weight_bytes=wbytes, flops=int(flops), minflt=flt[0], majflt=flt[1],
                rows=rows if self.touch else None,
                device_ns=sum(k["end_ns"] - k["start_ns"] for k in dev) if dev is not None else -1,
                kernels=[[k["kernel"], k["start_ns"], k["end_ns"]] for k in dev] if dev else []))
        return self._events

    @contextlib.contextmanager
    def span(self, name: str, **info):
        """A named span (e.g. one token) for the trace; nests ops by time."""
        t0 = time.perf_counter_ns()
        try:
            yield
        finally:
            self.marks.append({"name": name, "start_ns": t0 - self.started_ns,
                               "dur_ns": time.perf_counter_ns() - t0, **info})


@contextlib.contextmanager
def record(model, faults: bool = True, touch: bool = True, residency: bool = False):
    """Attach a recorder to a model's ops for the duration of the block.

    faults: page faults per op; touch: logical rows per op; residency: the mapped
    (pagemap) and cached (mincore) page masks of the model file, per forward pass."""
    ops = model.ops
    if ops.recorder is not None:
        raise RuntimeError("a recorder is already attached to these ops")
    res = None
    if residency:
        from .residency import Residency

        res = Residency(model.gguf)
    # while recording, backends that fuse ops (hold a result back, share one GEMM) do not,
    # so that each op's time is its own; device timings are kept only while recording
    flagged = tuple(b for b in ops.backends if hasattr(b, "profile"))
    timed = tuple(b for b in flagged if hasattr(b, "drain_kernel_events"))
    was = [b.profile for b in flagged]
    for b in flagged:
        b.profile = True
    for b in timed:
        b.drain_kernel_events()
    rec = Recorder(faults=faults, touch=touch, residency=res, ops=ops, device_timed=timed)
    ops.recorder = rec
    # Each op appends a tuple: at the default threshold (700 allocations) the cyclic garbage
    # collector would run every ~100 ops and walk the growing event list, which made up about
    # half of the recorder's cost per op. While recording it runs 70x less often; restored after.
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], GC_THRESHOLD_WHILE_RECORDING), *thresholds[1:])
    try:
        yield rec
    finally:
        gc.set_threshold(*thresholds)
        ops.recorder = None
        for b, p in zip(flagged, was):
            b.profile = p
        for b in timed:
            b.drain_kernel_events()
        if res is not None:
            rec.sample("end", ops.pos)
