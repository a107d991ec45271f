"""Devices fail: each case, forced on PoCL, gives a clear error, or with fallback=True runs on
numpy and says so (warning, ops.errors, the profile's events)."""

import numpy as np
import pytest

import workbench
from kernels.base import BackendError

pytest.importorskip("pyopencl", reason="the opencl backend needs pyopencl")
import kernels.opencl_backend as ob  # noqa: E402


def test_no_platform(monkeypatch, tiny_model_path):
    monkeypatch.setattr(ob, "_all_devices", lambda cl: [])
    with pytest.raises(BackendError, match="no OpenCL platform"):
        workbench.load(tiny_model_path, backend="opencl")
    with pytest.warns(RuntimeWarning, match="cannot start"):
        m = workbench.load(tiny_model_path, backend="opencl", fallback=True)
    assert m.ops.backend.name == "numpy" and "no OpenCL platform" in m.ops.errors[0]["error"]
    m.close()


def test_kernel_build_error(monkeypatch, tiny_model_path):
    real = ob._source
    monkeypatch.setattr(ob, "_source", lambda name: real(name) + ("\nthis is not OpenCL C;\n" if name == "rope" else ""))
    monkeypatch.setattr(ob, "_CONTEXTS", {})  # build afresh
    with pytest.raises(BackendError, match="rope"):
        workbench.load(tiny_model_path, backend="opencl")
    with pytest.warns(RuntimeWarning):
        m = workbench.load(tiny_model_path, backend="opencl", fallback=True)
    assert m.ops.backend.name == "numpy"
    m.close()


def _ref_logits(path, ids):
    m = workbench.load(path)
    try:
        return m.forward(m.new_state(8), ids)[-1]
    finally:
        m.close()


def _no_room_for_ffn_down(be):
    """Make the device unable to hold the FFN down projections (forced out-of-memory)."""
    real = be._weight

    def weight(w):
        if "ffn_down" in w.name:
            raise BackendError(f"cannot place {w.name} on the device: out of device memory (forced)")
        return real(w)

    be._weight = weight


def test_out_of_device_memory_falls_back_per_op(tiny_model_path):
    ids = [5, 6, 7]
    m = workbench.load(tiny_model_path, backend="opencl")
    _no_room_for_ffn_down(m.ops.backend)
    with pytest.raises(BackendError, match="out of device memory"):
        m.forward(m.new_state(8), ids)
    m.close()

    m = workbench.load(tiny_model_path, backend="opencl", fallback=True)
    _no_room_for_ffn_down(m.ops.backend)
    with pytest.warns(RuntimeWarning, match="out of device memory"):
        with workbench.record(m) as rec:
            logits = m.forward(m.new_state(8), ids)[-1]
    ev = [e.to_dict() for e in rec.events]
    down = [e for e in ev if e["tensor"] and "ffn_down" in e["tensor"]]
    assert down and all(e["backend"] == "numpy" and e["fallback"] for e in down)
    assert any(e["backend"] == "opencl" for e in ev if e["op"] == "matmul" and "ffn_down" not in e["tensor"])
    assert m.ops.errors and m.ops.errors[0]["op"] == "matmul"
    np.testing.assert_allclose(logits, _ref_logits(tiny_model_path, ids), atol=1e-3)
    m.close()


def test_rejected_kernel_launch(tiny_model_path):
    import pyopencl as cl

    m = workbench.load(tiny_model_path, backend="opencl", fallback=True)
    be = m.ops.backend
    kernel = be._kernels["silu_mul"]

    class Rejecting:  # a device that refuses this kernel (e.g. too many resources)
        function_name = "silu_mul"

        def __call__(self, *a, **k):
            raise cl.RuntimeError("clEnqueueNDRangeKernel failed: OUT_OF_RESOURCES (forced)")

    be._kernels["silu_mul"] = Rejecting()
    ids = [9, 10]
    with pytest.warns(RuntimeWarning, match="rejected kernel silu_mul"):
        logits = m.forward(m.new_state(8), ids)[-1]
    assert m.ops.route("silu_mul").name == "numpy"
    np.testing.assert_allclose(logits, _ref_logits(tiny_model_path, ids), atol=1e-3)
    be._kernels["silu_mul"] = kernel
    m.close()
