"""The OpenCL kernels' own e^x (exp1, exp8 in kernels/opencl/common.cl) against float64 numpy.

The ops' tests compare whole results with rtol 1e-5, which a poor exp can pass; this checks
the function itself: within 8 ulp over the whole normal range (its doc says 6), the limits
and the special values exact, and the float8 version equal to the scalar one lane by lane.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.opencl_backend import COMMON, KERNEL_DIR

SOURCE = r"""
kernel void exps(global const float *X, global float *Y1, global float *Y8, const int N) {
    const int i = get_global_id(0);
    if (i < N) Y1[i] = exp1(X[i]);
    if (8 * i + 8 <= N) vstore8(exp8(ld8f(X + 8 * i)), 0, Y8 + 8 * i);
}
"""


@pytest.fixture(scope="module")
def run_exps():
    try:
        import pyopencl as cl

        from kernels.opencl_backend import select_device

        dev = select_device(None)
        ctx = cl.Context([dev])
        prog = cl.Program(ctx, (KERNEL_DIR / f"{COMMON}.cl").read_text() + SOURCE).build(options=["-cl-std=CL1.2"])
    except Exception as e:  # no platform, no device, no pyopencl
        pytest.skip(f"no usable OpenCL device: {e}")
    queue, kernel = cl.CommandQueue(ctx), cl.Kernel(prog, "exps")

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        n = x.size
        mf = cl.mem_flags
        X = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=x)
        Y1, Y8 = cl.Buffer(ctx, mf.WRITE_ONLY, 4 * n), cl.Buffer(ctx, mf.WRITE_ONLY, 4 * n)
        kernel.set_args(X, Y1, Y8, np.int32(n))
        cl.enqueue_nd_range_kernel(queue, kernel, (n,), None)
        y1, y8 = np.empty(n, np.float32), np.full(n, np.nan, np.float32)
        cl.enqueue_copy(queue, y1, Y1)
        cl.enqueue_copy(queue, y8, Y8, is_blocking=True)
        return y1, y8

    return run


def test_exp_within_8_ulp_over_the_normal_range(run_exps):
    x = np.linspace(-87.3, 88.7, 1_000_000, dtype=np.float32)
    x = np.concatenate([x, np.random.default_rng(3).uniform(-5, 5, 100_000).astype(np.float32)])
    x = x[: x.size // 8 * 8]
    y1, y8 = run_exps(x)
    ref = np.exp(x.astype(np.float64))
    ulp = np.abs(y1.astype(np.float64) - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert ulp.max() <= 8, (ulp.max(), x[ulp.argmax()])
    np.testing.assert_array_equal(y8, y1)


def test_exp_limits_and_special_values(run_exps):
    x = np.array([-np.inf, -1000, -87.4, 0.0, -0.0, 1e-30, 89.0, np.inf], np.float32)
    y1, y8 = run_exps(x)
    want = np.array([0, 0, 0, 1, 1, 1, np.inf, np.inf], np.float32)
    np.testing.assert_array_equal(y1, want)
    np.testing.assert_array_equal(y8, want)
    y1, _ = run_exps(np.full(8, np.nan, np.float32))
    assert np.isnan(y1).all()
