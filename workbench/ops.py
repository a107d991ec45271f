"""Op dispatch: the ONE place that picks a backend per op and records what ran.

The forward calls `ops.<op>(...)`. `Ops` routes each op to the backend chosen for it (a
default backend, optionally overridden per op), falling back to numpy when the chosen
backend does not support the op or the weight's type, or (with `fallback_on_error`) when
the backend fails it at run time: either way the fallback shows in the profile.

When no recorder is attached, an op costs three attribute checks on top of the kernel
(resident device? fall back on errors? recorder?): within noise of no dispatch at all
(`workbench overhead`).
When one is (`workbench.record`), each op becomes one event with its timing, faults,
FLOPs, weight bytes and the logical rows of each weight it read.
"""

from __future__ import annotations

import warnings

import numpy as np

from kernels.base import OPS, Backend, BackendError
from kernels.numpy_backend import NumpyBackend


class Ops:
    def __init__(self, backend: Backend, per_op: dict[str, Backend] | None = None, fallback: Backend | None = None,
                 fallback_on_error: bool = False):
        """fallback_on_error: when a backend fails an op at run time (BackendError: out of device
        memory, a rejected kernel), warn, run that op (and every later op of its kind and weight
        type) on numpy instead, and list the failure in `errors`; off, the error propagates."""
        self.backend = backend
        self.fallback_on_error = fallback_on_error
        self.errors: list[dict] = []
        self.per_op = dict(per_op or {})
        unknown = set(self.per_op) - set(OPS)
        if unknown:
            raise ValueError(f"unknown op(s) {sorted(unknown)}; ops are {', '.join(OPS)}")
        self.fallback = fallback or (backend if isinstance(backend, NumpyBackend) else NumpyBackend())
        self.recorder = None  # set by workbench.record
        # where the forward is, read only by the recorder: layer (set by the forward),
        # phase and first position of the batch (set by Model.forward)
        self.layer: int | None = None
        self.phase: str = "prefill"
        self.pos: int = 0
        self._routes: dict = {}
        # a backend whose ops return device arrays; any other backend gets host copies
        self._resident = next((b for b in self.backends if getattr(b, "resident", False)), None)

    @property
    def backends(self) -> list[Backend]:
        seen = {}
        for b in (self.backend, *self.per_op.values(), self.fallback):
            seen.setdefault(id(b), b)
        return list(seen.values())

    def route(self, op: str, qtype=None) -> Backend:
        """The backend that runs `op` (for weights of `qtype`); cached per (op, type)."""
        key = (op, qtype)
        be = self._routes.get(key)
        if be is None:
            be = self.per_op.get(op, self.backend)
            if not be.supports(op, qtype):
                be = self.fallback
                if not be.supports(op, qtype):
                    raise NotImplementedError(f"no backend supports {op} for {getattr(qtype, 'name', qtype)}")
            self._routes[key] = be
        return be

    def only_on(self, backend: Backend) -> bool:
        """Whether every op routed so far runs on `backend` (no per-op choice, no fallback)."""
        return all(be is backend for be in self._routes.values())

    def fell_back(self, op: str, qtype, be: Backend) -> bool:
        return be is self.fallback and self.per_op.get(op, self.backend) is not self.fallback

    def prepare(self, weights) -> None:
        for be in self.backends:
            be.prepare(weights)
        # a backend may keep activations on its device once it knows a model runs here
        self._resident = next((b for b in self.backends if getattr(b, "resident", False)), None)

    def close(self) -> None:
        for be in self.backends:
            be.close()

    # ---- the ops the forward calls ----------------------------------------------------

    def _run(self, op, be, fn, args, weight=None, rows=None, flops=0):
        if self._resident and be is not self._resident:
            args = tuple(self._resident.to_host(a) for a in args)  # device arrays -> numpy
        if self.fallback_on_error and be is not self.fallback:
            try:
                return self._call(op, be, fn, args, weight, rows, flops)
            except BackendError as e:
                be = self._demote(op, getattr(weight, "qtype", None), be, e)
                fn = getattr(be, op)
                if self._resident:
                    args = tuple(self._resident.to_host(a) for a in args)
        return self._call(op, be, fn, args, weight, rows, flops)

    def _call(self, op, be, fn, args, weight, rows, flops):
        if self.recorder is None:
            return fn(*args)
        return self.recorder.op(self, op, be, fn, args, weight, rows, flops)

    def _demote(self, op, qtype, be, error) -> Backend:
        """Route (op, qtype) to numpy from now on, after `be` failed it."""
        self._routes[(op, qtype)] = self.fallback
        self.errors.append({"op": op, "qtype": getattr(qtype, "name", qtype), "backend": be.name, "error": str(error)})
        warnings.warn(f"{be.name} failed {op}{' ' + qtype.name if qtype is not None else ''}: {error}; "
                      f"running it on numpy from now on", RuntimeWarning, stacklevel=4)
        return self.fallback

    def embed(self, w, ids):
        ids = np.asarray(ids, dtype=np.int64)
        be = self.route("embed", w.qtype)
        return self._run("embed", be, be.embed, (w, ids), w, ids)

    def matmul(self, x, w):
        be = self.route("matmul", w.qtype)
        return self._run("matmul", be, be.matmul, (x, w), w, None, 2 * x.shape[0] * w.rows * w.cols)

    def rms_norm(self, x, w, eps):
        be = self.route("rms_norm")
        return self._run("rms_norm", be, be.rms_norm, (x, w.data.view(np.float32).reshape(-1), eps), w, None,
                         4 * x.size)

    def rope(self, x, pos, theta_base, mode, n_rot=None):
        be = self.route("rope")
        return self._run("rope", be, be.rope, (x, pos, theta_base, mode, n_rot), flops=6 * x.size)

    def attention(self, q, k, v, cache, layer, pos, scale, window=None):
        be = self.route("attention")
        n, H, hd = q.shape
        span = pos + n if window is None else min(pos + n, window)
        return self._run("attention", be, be.attention, (q, k, v, cache, layer, pos, scale, window),
                         flops=4 * n * H * hd * span)

    def silu_mul(self, g, u):
        be = self.route("silu_mul")
        return self._run("silu_mul", be, be.silu_mul, (g, u), flops=5 * g.size)

    def gelu_mul(self, g, u):
        be = self.route("gelu_mul")
        return self._run("gelu_mul", be, be.gelu_mul, (g, u), flops=10 * g.size)

    def add(self, a, b):
        be = self.route("add")
        return self._run("add", be, be.add, (a, b), flops=a.size)

    def scale(self, x, s):
        be = self.route("scale")
        return self._run("scale", be, be.scale, (x, s), flops=x.size)
