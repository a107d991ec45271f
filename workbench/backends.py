"""Backends by name: `make_backend("numpy" | "numexpr" | "opencl", ...)`."""

from __future__ import annotations

from kernels.base import Backend

BACKENDS = ("numpy", "numexpr", "opencl")


def make_backend(spec: str | Backend, weight_cache: str = "none", device: str | None = None) -> Backend:
    if isinstance(spec, Backend):
        return spec
    if spec == "numpy":
        from kernels.numpy_backend import NumpyBackend

        return NumpyBackend(weight_cache=weight_cache)
    if spec == "numexpr":
        from kernels.numexpr_backend import NumexprBackend

        return NumexprBackend(weight_cache=weight_cache)
    if spec == "opencl":
        from kernels.opencl_backend import OpenCLBackend

        return OpenCLBackend(device=device)
    raise ValueError(f"unknown backend {spec!r}; available: {', '.join(BACKENDS)}")
