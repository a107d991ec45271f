"""Every backend against the numpy backend (the living definition), op by op.

Backends under test: numexpr (as configured by default: numpy below `min_size`), numexpr
forced (numexpr for every size, numexpr dequantization), and opencl (skipped, with the
reason, when pyopencl or an OpenCL device is missing). Weights are random raw GGUF blocks
with sane f16 scales, built from kernels.qtypes; shapes are odd on purpose: rows and widths
that are not multiples of any work-group size, 1-token and many-token batches.

Tolerances: dequantization (embed) must be bit-identical; a matmul must agree within
1e-5 of the sum of |x| |w| (the scale of its rounding error); other f32 ops within 1e-5
relative (plus 1e-6 of the largest value, for results that cancel to near zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from kernels import base
from kernels.base import OPS, ROPE_NEOX, ROPE_NORM, BackendError
from kernels.numexpr_backend import NumexprBackend
from kernels.numpy_backend import NumpyBackend
from kernels.qtypes import BY_NAME, QType, dequantize

SEED = 1234
REF = NumpyBackend()

# Types with a matmul/embed kernel in every backend under test (the OpenCL set).
WEIGHT_TYPES = ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"]
# Where each block type keeps its f16 scale fields (byte offsets); the rest is integer bits.
SCALE_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
                "Q2_K": [80, 82], "Q4_K": [0, 2], "Q6_K": [208]}


# ---- backends ---------------------------------------------------------------------------

def _opencl():
    try:
        from kernels.opencl_backend import OpenCLBackend
        return OpenCLBackend()
    except BackendError as e:
        pytest.skip(f"no usable OpenCL device: {e}")


BACKEND_FACTORIES = {
    "numexpr": lambda: NumexprBackend(),
    "numexpr-forced": lambda: NumexprBackend(min_size=0, dequant="numexpr"),
    "opencl": _opencl,
}


@pytest.fixture(scope="module", params=list(BACKEND_FACTORIES))
def be(request):
    b = BACKEND_FACTORIES[request.param]()
    yield b
    b.close()


@pytest.fixture(scope="module")
def ocl():
    b = _opencl()
    yield b
    b.close()


# ---- random data ------------------------------------------------------------------------

@dataclass(eq=False)
class Weight:
    """The weight interface of kernels.base: qtype, rows, cols, data (rows, row_bytes) uint8."""

    name: str
    qtype: QType
    cols: int
    data: np.ndarray

    @property
    def rows(self) -> int:
        return self.data.shape[0]

    @property
    def row_bytes(self) -> int:
        return self.data.shape[1]


def random_weight(type_name: str, rows: int, cols: int, seed: int = SEED) -> Weight:
    """Random raw blocks of `type_name`: random integer bits, f16 scales of sane size and
    either sign (F32/F16: normal values)."""
    rng = np.random.default_rng(seed)
    q = BY_NAME[type_name]
    if type_name in ("F32", "F16"):
        vals = rng.standard_normal((rows, cols)).astype(np.float32 if type_name == "F32" else np.float16)
        return Weight(f"random {type_name}", q, cols, vals.view(np.uint8))
    raw = rng.integers(0, 256, (rows, q.row_bytes(cols)), dtype=np.uint8)
    blocks = raw.reshape(-1, q.type_size)
    for at in SCALE_FIELDS[type_name]:
        scales = rng.uniform(0.002, 0.05, len(blocks)) * rng.choice([-1.0, 1.0], len(blocks))
        blocks[:, at : at + 2] = scales.astype("<f2").view(np.uint8).reshape(-1, 2)
    return Weight(f"random {type_name}", q, cols, raw)


def randn(*shape, seed: int = SEED, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def assert_close(got, ref, rtol=1e-5, atol_of_max=1e-6):
    got = np.asarray(got)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == np.float32, got.dtype
    tol = rtol * np.abs(ref) + atol_of_max * np.abs(ref).max()
    bad = np.abs(got - ref) > tol
    assert not bad.any(), f"{bad.sum()} of {bad.size} differ; worst {np.max(np.abs(got - ref) - tol):.3g} over"


def cols_for(type_name: str, n_units: int) -> int:
    """A row width of about n_units x 32 weights: whole blocks for block types, ragged
    (not a multiple of 32) for F32/F16."""
    bs = BY_NAME[type_name].block_size
    if bs == 1:
        return 32 * n_units - 13
    return max(bs, bs * (32 * n_units // bs))


# (rows, units of 32 weights a row, tokens): 1 token, tile-sized, tile + 1, many rows
MATMUL_SHAPES = [(1, 1, 1), (37, 3, 1), (7, 9, 8), (130, 18, 9), (67, 8, 17)]


# ---- weight ops -------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
@pytest.mark.parametrize("rows,units,n", MATMUL_SHAPES)
def test_matmul(be, type_name, rows, units, n):
    w = random_weight(type_name, rows, cols_for(type_name, units))
    x = randn(n, w.cols)
    assert be.supports("matmul", w.qtype)
    got, ref = be.matmul(x, w), REF.matmul(x, w)
    bound = np.abs(x) @ np.abs(dequantize(w.data, w.qtype)).T
    assert got.shape == ref.shape == (n, rows) and got.dtype == np.float32
    assert np.all(np.abs(got - ref) <= 1e-5 * bound + 1e-30), np.max(np.abs(got - ref) / bound)


@pytest.mark.parametrize("type_name", ["F32", "F16"])
@pytest.mark.parametrize("n", [8, 17])
def test_matmul_whole_units_of_plain_types(be, type_name, n):
    """F32/F16 rows of whole 32-weight units (test_matmul's are ragged): full token tiles
    take OpenCL's tail-free loop."""
    w = random_weight(type_name, 19, 96)
    x = randn(n, w.cols)
    got, ref = be.matmul(x, w), REF.matmul(x, w)
    bound = np.abs(x) @ np.abs(dequantize(w.data, w.qtype)).T
    assert np.all(np.abs(got - ref) <= 1e-5 * bound + 1e-30), np.max(np.abs(got - ref) / bound)


@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
@pytest.mark.parametrize("rows,units", [(1, 1), (37, 3), (130, 18)])
def test_embed_is_bit_identical(be, type_name, rows, units):
    w = random_weight(type_name, rows, cols_for(type_name, units))
    ids = np.array([rows - 1, 0, rows // 2, rows - 1], np.int64)[: max(1, min(4, rows + 1))]
    assert be.supports("embed", w.qtype)
    got, ref = be.embed(w, ids), REF.embed(w, ids)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_matmul_on_real_model_sized_rows(be):
    """One SmolLM2-shaped weight (Q4_1, 576 wide) for a decode and a short prompt."""
    w = random_weight("Q4_1", 1536, 576)
    for n in (1, 5):
        x = randn(n, 576)
        bound = np.abs(x) @ np.abs(dequantize(w.data, w.qtype)).T
        assert np.all(np.abs(be.matmul(x, w) - REF.matmul(x, w)) <= 1e-5 * bound)


# ---- activation ops ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 576), (5, 77), (17, 1000), (2, 3, 40)])
def test_rms_norm(be, shape):
    x, w = randn(*shape), randn(shape[-1], seed=2)
    assert_close(be.rms_norm(x, w, 1e-5), REF.rms_norm(x, w, 1e-5))


@pytest.mark.parametrize("mode", [ROPE_NORM, ROPE_NEOX])
@pytest.mark.parametrize("n,H,hd,n_rot,pos0", [(1, 9, 64, None, 0), (5, 3, 16, None, 7000),
                                               (17, 2, 80, 48, 3), (3, 1, 256, None, 123)])
def test_rope(be, mode, n, H, hd, n_rot, pos0):
    x = randn(n, H, hd)
    pos = np.arange(pos0, pos0 + n)
    assert_close(be.rope(x, pos, 10000.0, mode, n_rot), REF.rope(x, pos, 10000.0, mode, n_rot))


def test_rope_rejects_unknown_mode(be):
    with pytest.raises(ValueError, match="rope mode"):
        be.rope(randn(1, 1, 8), np.arange(1), 1e4, "sideways")


@pytest.mark.parametrize("shape", [(1, 7), (3, 49152), (2, 3, 1000), (9, 1)])
def test_softmax(be, shape):
    x = randn(*shape, scale=4.0)
    assert_close(be.softmax(x), REF.softmax(x))


@pytest.mark.parametrize("op", ["silu_mul", "gelu_mul"])
@pytest.mark.parametrize("shape", [(1, 1536), (7, 77), (3, 5, 33), (1, 1)])
def test_gated(be, op, shape):
    g, u = randn(*shape, scale=3.0), randn(*shape, seed=5)
    got, ref = getattr(be, op)(g, u), getattr(REF, op)(g, u)
    # the absolute part on the operands' scale |g u|: where gelu's 1 + tanh(z) cancels (g < -3)
    # the reference itself is off by up to 10 % of a value ~1e-7 |g u| (the (1, 1) case)
    if op == "gelu_mul":
        _assert_close_on_scale(got, ref, np.abs(g * u).max())
    else:
        assert_close(got, ref)


def _assert_close_on_scale(got, ref, scale, rtol=1e-5, atol_of_scale=1e-6):
    assert got.shape == ref.shape and got.dtype == np.float32
    bad = np.abs(got - ref) > rtol * np.abs(ref) + atol_of_scale * scale
    assert not bad.any(), f"{bad.sum()} of {bad.size} differ"


def test_numexpr_gelu_is_accurate_where_the_tanh_form_cancels():
    g = np.linspace(-9, 9, 1001, dtype=np.float32)
    u = np.ones_like(g)
    g64 = g.astype(np.float64)
    # g/2 (1 + tanh z) = g / (1 + exp(-2z)), in float64 (where 1 + tanh z would cancel even there)
    exact = g64 / (1 + np.exp(-2 * np.sqrt(2 / np.pi) * (g64 + 0.044715 * g64 ** 3)))
    got = NumexprBackend(min_size=0).gelu_mul(g, u)
    # 1e-5: float32 z has relative error ~eps, which exp(-2z) multiplies by |2z| (~40 at g = -9)
    assert np.all(np.abs(got - exact) <= 1e-5 * np.abs(exact))


@pytest.mark.parametrize("shape", [(1, 576), (7, 77), (3, 5, 33)])
def test_add_and_scale(be, shape):
    a, b = randn(*shape), randn(*shape, seed=3)
    np.testing.assert_array_equal(be.add(a, b), REF.add(a, b))
    np.testing.assert_array_equal(be.scale(a, 0.125), REF.scale(a, 0.125))
    np.testing.assert_array_equal(be.scale(a, 1 / 3), REF.scale(a, 1 / 3))


def test_add_broadcasts_like_numpy(be):
    a, b = randn(5, 77), randn(77, seed=3)
    np.testing.assert_array_equal(be.add(a, b), REF.add(a, b))


# ---- attention over the backend's own KV cache ------------------------------------------

@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("H,Hkv,hd", [(6, 2, 16), (9, 3, 64), (4, 4, 8)])
def test_attention_prefill_then_decode(be, H, Hkv, hd, window):
    n_ctx, layer = 40, 1
    mine, ref = be.new_kv_cache(2, n_ctx, Hkv, hd), REF.new_kv_cache(2, n_ctx, Hkv, hd)
    pos = 0
    for step, n in enumerate([5, 1, 1, 13, 1]):
        seed = 10 * step
        q, k, v = randn(n, H, hd, seed=seed), randn(n, Hkv, hd, seed=seed + 1), randn(n, Hkv, hd, seed=seed + 2)
        got = be.attention(q, k, v, mine, layer, pos, 1 / np.sqrt(hd), window)
        want = REF.attention(q, k, v, ref, layer, pos, 1 / np.sqrt(hd), window)
        assert_close(got, want, rtol=1e-5, atol_of_max=1e-6)
        pos += n


def test_attention_on_a_host_cache(be):
    """A cache made by another backend (numpy arrays) still works, and is kept current."""
    H, Hkv, hd = 4, 2, 8
    mine, ref = REF.new_kv_cache(1, 16, Hkv, hd), REF.new_kv_cache(1, 16, Hkv, hd)
    pos = 0
    for step, n in enumerate([3, 1, 2]):
        q, k, v = randn(n, H, hd, seed=step), randn(n, Hkv, hd, seed=step + 7), randn(n, Hkv, hd, seed=step + 9)
        assert_close(be.attention(q, k, v, mine, 0, pos, 0.3), REF.attention(q, k, v, ref, 0, pos, 0.3))
        pos += n
    np.testing.assert_array_equal(mine.k[0], ref.k[0])


# ---- supports() and fallback ------------------------------------------------------------

def test_supports_every_op_for_supported_types(be):
    for op in OPS:
        if op in ("matmul", "embed"):
            for t in WEIGHT_TYPES:
                assert be.supports(op, BY_NAME[t]), (op, t)
        else:
            assert be.supports(op), op
    assert not be.supports("conv2d")


def test_opencl_declines_other_types_and_ops_fall_back_to_numpy(ocl):
    from workbench.ops import Ops

    for t in ("Q5_1", "Q2_K", "Q3_K", "Q5_K", "BF16", "IQ4_NL"):
        assert not ocl.supports("matmul", BY_NAME[t]), t
    assert not ocl.supports("matmul")  # a matmul needs a weight type
    ops = Ops(ocl)
    w = random_weight("Q2_K", 9, 256)
    x = randn(3, 256)
    assert ops.route("matmul", w.qtype) is ops.fallback
    assert ops.fell_back("matmul", w.qtype, ops.route("matmul", w.qtype))
    np.testing.assert_array_equal(ops.matmul(x, w), REF.matmul(x, w))
    w41 = random_weight("Q4_1", 9, 64)
    assert ops.route("matmul", w41.qtype) is ocl


# ---- OpenCL specifics: errors, device choice, events, weight cache ----------------------

def test_opencl_device_that_matches_nothing_is_a_clear_error(ocl):
    from kernels.opencl_backend import OpenCLBackend

    with pytest.raises(BackendError, match=r"no OpenCL device matches 'no-such-device-xyz'; found: 0: "):
        OpenCLBackend(device="no-such-device-xyz")
    with pytest.raises(BackendError, match="no OpenCL device with index 99; found"):
        OpenCLBackend(device=99)


def test_opencl_device_from_env(ocl, monkeypatch):
    from kernels.opencl_backend import ENV_DEVICE, OpenCLBackend, list_devices

    monkeypatch.setenv(ENV_DEVICE, "nothing-called-this")
    with pytest.raises(BackendError, match="nothing-called-this"):
        OpenCLBackend()
    name = list_devices()[0]
    monkeypatch.setenv(ENV_DEVICE, name.split(": ", 1)[1][:6].upper())  # case-insensitive substring
    b = OpenCLBackend()
    assert b.device.name.strip() in name
    b.close()
    b = OpenCLBackend(device=0)  # an explicit device wins over the environment
    assert b.device.name.strip() in name
    b.close()


def test_opencl_without_platform_or_pyopencl(ocl, monkeypatch):
    import sys

    from kernels import opencl_backend as ob

    monkeypatch.setattr(ob, "_all_devices", lambda cl: [])
    with pytest.raises(BackendError, match="no OpenCL platform"):
        ob.OpenCLBackend()
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # import pyopencl -> ImportError
    with pytest.raises(BackendError, match="needs pyopencl"):
        ob.OpenCLBackend()


def test_opencl_build_failure_names_the_file(ocl, monkeypatch, tmp_path):
    from kernels import opencl_backend as ob

    for f in ob.KERNEL_DIR.glob("*.cl"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "norm.cl").write_text("kernel void broken(global float *x) { x[0] = undeclared; }\n")
    monkeypatch.setattr(ob, "KERNEL_DIR", tmp_path)
    monkeypatch.setattr(ob, "_CONTEXTS", {})
    with pytest.raises(BackendError, match=r"build of kernels/opencl/norm.cl failed"):
        ob.OpenCLBackend()


def test_opencl_kernel_events(ocl):
    ocl.profile = True
    ocl.drain_kernel_events()
    w = random_weight("Q8_0", 33, 64)
    ocl.matmul(randn(2, 64), w)
    ocl.silu_mul(randn(3, 10), randn(3, 10))
    events = ocl.drain_kernel_events()
    names = [e["kernel"] for e in events]
    assert "matmul_q8_0" in names and "silu_mul" in names
    assert names.index("matmul_q8_0") < names.index("silu_mul")
    for e in events:
        assert set(e) == {"kernel", "queued_ns", "submit_ns", "start_ns", "end_ns"}
        assert e["queued_ns"] <= e["submit_ns"] <= e["start_ns"] <= e["end_ns"], e
    assert ocl.drain_kernel_events() == []


def test_opencl_uploads_each_weight_once(ocl):
    w = random_weight("Q4_0", 20, 64)
    before = len(ocl._weights)
    for _ in range(3):
        ocl.matmul(randn(1, 64), w)
    ocl.embed(w, np.array([1, 2]))
    assert len(ocl._weights) == before + 1
    assert ocl._weight(w) is ocl._weight(w)


@pytest.mark.parametrize("mode", ["copy", "host_ptr"])
def test_opencl_weight_placement_modes_agree(mode):
    try:
        from kernels.opencl_backend import OpenCLBackend
        b = OpenCLBackend(weights=mode)
    except BackendError as e:
        pytest.skip(f"no usable OpenCL device: {e}")
    w = random_weight("Q6_K", 5, 512)
    x = randn(3, 512)
    np.testing.assert_array_equal(b.embed(w, np.arange(5)), REF.embed(w, np.arange(5)))
    bound = np.abs(x) @ np.abs(dequantize(w.data, w.qtype)).T
    assert np.all(np.abs(b.matmul(x, w) - REF.matmul(x, w)) <= 1e-5 * bound)
    b.close()


def test_opencl_kv_cache_lives_on_the_device(ocl):
    from kernels.opencl_backend import CLKVCache

    c = ocl.new_kv_cache(2, 8, 2, 4)
    assert isinstance(c, CLKVCache) and isinstance(c, base.KVCache) and c.n_ctx == 8
    k, v = randn(3, 2, 4), randn(3, 2, 4, seed=9)
    ocl.attention(randn(3, 4, 4), k, v, c, 1, 0, 0.5)
    hk, hv = ocl.kv_to_host(c, 1)
    np.testing.assert_array_equal(hk[:3], k)
    np.testing.assert_array_equal(hv[:3], v)


# ---- registry and a whole (tiny) model ----------------------------------------------------

def test_make_backend_knows_every_backend():
    from workbench.backends import BACKENDS, make_backend

    assert set(BACKENDS) >= {"numpy", "numexpr", "opencl"}
    nx = make_backend("numexpr", weight_cache="f32")
    assert isinstance(nx, NumexprBackend) and nx.weight_cache == "f32"
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("cuda")


def test_make_backend_opencl_passes_the_device(ocl):
    from workbench.backends import make_backend

    with pytest.raises(BackendError, match="no-such-device"):
        make_backend("opencl", device="no-such-device")
    b = make_backend("opencl", device="0")
    assert b.name == "opencl"
    b.close()


@pytest.mark.parametrize("backend", ["numexpr", "opencl"])
def test_tiny_model_agrees_with_numpy(tiny_model_path, backend):
    import workbench

    ids = [5, 17, 200, 3, 3, 99, 42]
    ref = workbench.load(tiny_model_path)
    try:
        m = workbench.load(tiny_model_path, backend=backend)
    except BackendError as e:
        ref.close()
        pytest.skip(f"no usable OpenCL device: {e}")
    try:
        want = ref.forward(ref.new_state(16), ids, all_logits=True)
        st = m.new_state(16)
        got = m.forward(st, ids[:4], all_logits=True)
        got = np.concatenate([got] + [m.forward(st, [t]) for t in ids[4:]])  # prefill, then decode
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        assert np.array_equal(got.argmax(-1), want.argmax(-1))
    finally:
        m.close()
        ref.close()


# ---- OpenCL resident mode: activations stay on the device ---------------------------------

@pytest.fixture(scope="module")
def resident():
    try:
        from kernels.opencl_backend import OpenCLBackend
        b = OpenCLBackend(resident=True)
    except BackendError as e:
        pytest.skip(f"no usable OpenCL device: {e}")
    yield b
    b.close()


def test_resident_ops_chain_on_the_device(resident):
    from kernels.opencl_backend import CLArray

    w = random_weight("Q4_K", 40, 256)
    x, nw = randn(3, 256), randn(256, seed=4)
    h = resident.rms_norm(x, nw, 1e-5)
    y = resident.matmul(h, w)
    assert isinstance(h, CLArray) and isinstance(y, CLArray) and y.shape == (3, 40)
    z = resident.silu_mul(resident.scale(y, 0.01), y)
    want_h = REF.rms_norm(x, nw, 1e-5)
    want_y = REF.matmul(want_h, w)
    assert_close(np.asarray(z), REF.silu_mul(REF.scale(want_y, 0.01), want_y), rtol=1e-4, atol_of_max=1e-5)
    last = y[-1:]
    assert isinstance(last, CLArray) and last.shape == (1, 40)
    np.testing.assert_array_equal(resident.to_host(last), np.asarray(y)[-1:])
    assert y.reshape(3, 4, 10).shape == (3, 4, 10) and y.reshape(-1).shape == (120,)
    with pytest.raises(ValueError, match="cannot reshape"):
        y.reshape(7, 7)
    with pytest.raises(TypeError, match="x\\[a:b\\]"):
        y[0]
    assert resident.to_host(x) is x  # host arrays pass through


def test_resident_tiny_model_agrees_with_numpy(tiny_model_path, resident):
    import workbench

    ids = [5, 17, 200, 3, 3, 99, 42]
    ref, m = workbench.load(tiny_model_path), workbench.load(tiny_model_path, backend=resident)
    try:
        want = ref.forward(ref.new_state(16), ids, all_logits=True)
        st = m.new_state(16)
        got = [m.forward(st, ids[:4], all_logits=True)] + [m.forward(st, [t]) for t in ids[4:]]
        got = np.concatenate(got)
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        last = m.forward(m.new_state(16), ids)  # last position only: x[-1:] on the device
        np.testing.assert_allclose(last, want[-1:], rtol=1e-4, atol=1e-4 * np.abs(want).max())
    finally:
        m.close()
        ref.close()


# ---- numexpr: which path runs ------------------------------------------------------------

def test_numexpr_routes_by_measured_size_per_op(monkeypatch):
    import kernels.numexpr_backend as nxb

    calls = []
    real_add = nxb._ADD
    monkeypatch.setattr(nxb, "_ADD", lambda a, b: calls.append(a.size) or real_add(a, b))
    be = NumexprBackend(min_size={"add": 100})
    assert be.min_size["scale"] == nxb.MIN_SIZE["scale"]  # the other ops keep the defaults
    a, b = randn(99), randn(99, seed=3)
    np.testing.assert_array_equal(be.add(a, b), REF.add(a, b))
    assert calls == [] and not be.uses_numexpr("add", 99)
    a, b = randn(100), randn(100, seed=3)
    np.testing.assert_array_equal(be.add(a, b), REF.add(a, b))
    assert calls == [100] and be.uses_numexpr("add", 100)


def test_numexpr_default_sizes_and_forcing():
    from kernels.numexpr_backend import MIN_SIZE

    default = NumexprBackend()
    assert default.min_size == MIN_SIZE
    forced = NumexprBackend(min_size=0)
    assert all(forced.uses_numexpr(op, 1) for op in MIN_SIZE)
    with pytest.raises(ValueError, match="unknown op"):
        NumexprBackend(min_size={"matmul": 10})
    # the default path is numpy's own code: bit-identical even where numexpr's gelu differs
    g, u = randn(4, 1536, scale=3.0), randn(4, 1536, seed=5)
    if not default.uses_numexpr("gelu_mul", g.size):
        np.testing.assert_array_equal(default.gelu_mul(g, u), REF.gelu_mul(g, u))


def test_numexpr_threads_setting():
    import numexpr as ne

    before = ne.get_num_threads()
    try:
        NumexprBackend(threads=1)
        assert ne.get_num_threads() == 1
        be = NumexprBackend(min_size=0, threads=2)
        assert ne.get_num_threads() == 2
        x, y = randn(64, 1536), randn(64, 1536, seed=3)  # big enough to be split over threads
        np.testing.assert_array_equal(be.add(x, y), REF.add(x, y))
        assert_close(be.silu_mul(x, y), REF.silu_mul(x, y))
    finally:
        ne.set_num_threads(before)


def test_op_bench_shows_both_numexpr_paths():
    from workbench.bench import run_op_bench

    report = run_op_bench(("numpy", "numexpr", "numexpr-forced"), tokens=(1,), repeat=1, log=lambda s: None)
    rows = {r["op"]: r for r in report["rows"]}
    assert set(rows) == {"rms_norm", "rope", "silu_mul", "gelu_mul", "add", "scale", "softmax"}
    default = NumexprBackend()
    for op, r in rows.items():
        assert r["numexpr-forced_us"] > 0 and r["numexpr_speedup"] > 0
        size = 9 * 64 if op == "rope" else 1536
        assert r["numexpr_path"] == ("numexpr" if default.uses_numexpr(op, size) else "numpy")
    assert report["numexpr"]["threads"] >= 1


@pytest.mark.parametrize("weight_type", ["Q8_0", "F32"])
def test_f32_cache_holds_each_weight_dequantized(tmp_path, weight_type, monkeypatch):
    """prepare() dequantizes in bands of rows: every cached weight equals a whole-tensor
    dequantization (bands of 7 rows here, so bands end mid-tensor), and nothing is missed."""
    import kernels.numpy_backend as nb
    import workbench
    from workbench.synth import tiny_llama

    monkeypatch.setattr(nb, "CHUNK_WEIGHTS", 7 * 64)
    path = tmp_path / "t.gguf"
    tiny_llama(path, n_embd=64, n_ff=96, weight_type=weight_type)
    m = workbench.load(path, weight_cache="f32")
    try:
        be = m.ops.backend
        grouped = {}
        for block, parts in be._groups.values():
            assert block.flags.f_contiguous
            grouped.update({wid: (block, a, b) for wid, a, b in parts})
        assert len(grouped) == 5 * len(m.weights.blocks)  # q, k, v and gate, up of every layer
        for w in m.weights.tensors():
            ref = w.data.view(np.float32) if w.qtype.name == "F32" else dequantize(w.data, w.qtype)
            cached = be._cache[id(w)]
            np.testing.assert_array_equal(cached.reshape(ref.shape), ref)
            if id(w) in grouped:  # rows a:b of its group's column-major block
                block, a, b = grouped[id(w)]
                assert cached.base is block or cached.base is block.base
                assert np.shares_memory(cached, block[a:b]) and cached.shape == block[a:b].shape
            elif cached.ndim == 2 and w.qtype.name != "F32":  # tall weights column-major: x @ w.T is NN
                assert cached.flags.f_contiguous if w.rows >= w.cols else cached.flags.c_contiguous
        assert be.cache_bytes == sum(w.rows * w.cols * 4 for w in m.weights.tensors())
    finally:
        m.close()


@pytest.mark.parametrize("n", [1, 5])
def test_f32_cache_runs_weights_with_one_input_as_one_gemm(tmp_path, n):
    """q/k/v (and gate/up) of a layer read the same input: the first matmul computes all three
    in one GEMM and the others take their part, for that very input array only; while a
    recorder runs (`profile`) each computes its own. Every product equals float64 x @ w.T of
    an independent dequantization, within float32 rounding."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    import workbench
    from workbench.synth import tiny_llama

    path = tmp_path / "t.gguf"
    tiny_llama(path, n_embd=64, n_ff=96, weight_type="Q8_0")
    m = workbench.load(path, weight_cache="f32")
    try:
        be, b = m.ops.backend, m.weights.blocks[1]
        rng = np.random.default_rng(n)
        x, y = (rng.standard_normal((n, 64)).astype(np.float32) for _ in range(2))

        def ref(inp, w):  # gguf-py's dequantization, independent of kernels.qtypes
            wf = gguf_dequantize(np.asarray(w.data), GGMLQuantizationType[w.qtype.name])
            return inp.astype(np.float64) @ wf.astype(np.float64).reshape(w.rows, w.cols).T

        def check(out, inp, w):
            np.testing.assert_allclose(out, ref(inp, w), rtol=0, atol=1e-5 * np.abs(inp).sum(1).max())

        q = be.matmul(x, b.attn_q)
        k = be.matmul(x, b.attn_k)
        assert np.shares_memory(q.base, k)  # one GEMM made both
        v = be.matmul(y, b.attn_v)  # another input: its own product, not x's
        for out, inp, w in ((q, x, b.attn_q), (k, x, b.attn_k), (v, y, b.attn_v)):
            check(out, inp, w)
        g, u = be.matmul(y, b.ffn_gate), be.matmul(y, b.ffn_up)
        check(g, y, b.ffn_gate), check(u, y, b.ffn_up)
        be.profile = True
        try:
            q, k = be.matmul(x, b.attn_q), be.matmul(x, b.attn_k)
            assert not np.shares_memory(q, k) and not be._held
            check(q, x, b.attn_q), check(k, x, b.attn_k)
            be.fuse = True  # fused even under a recorder
            q, k, v = be.matmul(x, b.attn_q), be.matmul(x, b.attn_k), be.matmul(x, b.attn_v)
            assert np.shares_memory(q.base, k) and np.shares_memory(q.base, v) and not be._held
            check(q, x, b.attn_q), check(k, x, b.attn_k), check(v, x, b.attn_v)
        finally:
            be.profile, be.fuse = False, None
        be.fuse = False  # never fused
        q, k = be.matmul(x, b.attn_q), be.matmul(x, b.attn_k)
        assert not np.shares_memory(q, k) and not be._held
    finally:
        m.close()
