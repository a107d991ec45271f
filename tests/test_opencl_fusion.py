"""OpenCL fusion: launches held back for the op that reads their result (resident mode), each
fused kernel against the numpy backend on odd shapes, and the held-back results still right
when something else reads them.

Fused kernels: matvec3_<type> (up to three matvecs of one input: q, k, v), matvec_glu_<type>
(gate, up and the gated product), add_rms_norm (residual add and the norm reading it),
attn_decode with rot=1 (the ropes of q and k inside the decode attention).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_backends import REF, SEED, WEIGHT_TYPES, Weight, assert_close, cols_for, randn, random_weight

from kernels.base import ROPE_NEOX, ROPE_NORM, BackendError
from kernels.qtypes import dequantize


@pytest.fixture(scope="module")
def fused():
    try:
        from kernels.opencl_backend import OpenCLBackend
        b = OpenCLBackend(resident=True, fuse=True, profile=True)  # profile: see which kernels ran
    except BackendError as e:
        pytest.skip(f"no usable OpenCL device: {e}")
    yield b
    b.close()


def _on_device(be, x):
    """x as a device array of `be` (what a resident forward hands the next op)."""
    return be.scale(x, 1.0)


def _kernels(be) -> list[str]:
    return [e["kernel"] for e in be.drain_kernel_events() if not e["kernel"].startswith("copy")]


def _matmul_ok(got, x, w):
    bound = np.abs(x) @ np.abs(dequantize(w.data, w.qtype)).T
    assert np.all(np.abs(np.asarray(got) - REF.matmul(x, w)) <= 1e-5 * bound + 1e-30)


def test_the_default_backend_fuses_only_when_resident_and_not_recording():
    from kernels.opencl_backend import OpenCLBackend

    try:
        b = OpenCLBackend()
    except BackendError as e:
        pytest.skip(f"no usable OpenCL device: {e}")
    try:
        assert not b.resident and not b._fusing()  # direct calls: host arrays, nothing held back
        b.prepare([])
        assert b.resident and b._fusing()  # a model runs through ops.py
        b.profile = True
        assert not b._fusing()  # a recorder: every op's kernels are its own
    finally:
        b.close()


@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
@pytest.mark.parametrize("rows", [(37, 5, 5), (130, 67), (9, 1, 17), (40, 41, 42, 3)])
def test_matvecs_of_one_input_share_a_launch(fused, type_name, rows):
    cols = cols_for(type_name, 3)
    ws = [random_weight(type_name, r, cols, seed=SEED + i) for i, r in enumerate(rows)]
    x = randn(1, cols)
    h = _on_device(fused, x)
    _kernels(fused)
    ys = [fused.matmul(h, w) for w in ws]
    assert _kernels(fused) == []  # held back
    got = [np.asarray(y) for y in ys]  # the first read launches them all
    name = type_name.lower()
    want = [f"matvec3_{name}"] + ([f"matvec3_{name}" if len(ws) == 5 else f"matvec_{name}"] if len(ws) > 3 else [])
    assert _kernels(fused) == want
    for g, w in zip(got, ws):
        _matmul_ok(g, x, w)


@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
@pytest.mark.parametrize("op", ["silu_mul", "gelu_mul"])
def test_gate_up_and_product_in_one_launch(fused, type_name, op):
    cols = cols_for(type_name, 5)
    wg, wu = random_weight(type_name, 67, cols, seed=3), random_weight(type_name, 67, cols, seed=4)
    x = randn(1, cols, scale=0.02)  # gate values of a few units: silu neither 0 nor overflowing
    h = _on_device(fused, x)
    _kernels(fused)
    y = getattr(fused, op)(fused.matmul(h, wg), fused.matmul(h, wu))
    assert _kernels(fused) == [f"matvec_glu_{type_name.lower()}"]
    # the gate and up results, read on their own, are launched then; the fused product is
    # exactly the elementwise kernel's on them (same dot products, same activation)
    g, u = fused.matmul(h, wg), fused.matmul(h, wu)
    _matmul_ok(g, x, wg)
    _matmul_ok(u, x, wu)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(getattr(fused, op)(np.asarray(g), np.asarray(u))))
    assert_close(np.asarray(y), getattr(REF, op)(REF.matmul(x, wg), REF.matmul(x, wu)), rtol=1e-4, atol_of_max=1e-5)


def test_held_back_gate_and_up_still_read_right(fused):
    wg, wu = random_weight("Q4_1", 33, 96, seed=5), random_weight("Q4_1", 33, 96, seed=6)
    x = randn(1, 96)
    h = _on_device(fused, x)
    g, u = fused.matmul(h, wg), fused.matmul(h, wu)
    y = fused.silu_mul(g, u)
    _matmul_ok(g, x, wg)  # read after the fused launch: launched on their own
    _matmul_ok(u, x, wu)
    assert_close(np.asarray(y), REF.silu_mul(REF.matmul(x, wg), REF.matmul(x, wu)), rtol=1e-4, atol_of_max=1e-5)


@pytest.mark.parametrize("type_name", ["Q4_1", "Q4_0", "Q8_0"])
@pytest.mark.parametrize("d,ff", [(576, 1536), (320, 288), (96, 64)])
def test_a_decode_layers_matvecs_with_unit_sums(fused, type_name, d, ff):
    """A decode layer's chain as a forward runs it: on a CPU device the norm also writes its
    row's unit sums (each 32 values summed), the q/k/v and gate/up matvecs take the Q4_1
    offsets' share from them, and the gated product writes its own for the down matvec
    (matmul.cl, dot256_q4_1). Whole groups of eight units, the units after them, and rows too
    narrow for a group."""
    x, g = randn(1, d), randn(d, seed=3, scale=0.02)  # gate values of a few units: exp neither overflows nor 0
    h = fused.rms_norm(_on_device(fused, x), g, 1e-5)
    hx = np.asarray(h)
    assert_close(hx, REF.rms_norm(x, g, 1e-5))
    wq, wk, wv = (random_weight(type_name, r, d, seed=SEED + i) for i, r in enumerate((d, 64, 64)))
    for y, w in zip([fused.matmul(h, w) for w in (wq, wk, wv)], (wq, wk, wv)):
        _matmul_ok(y, hx, w)
    wg, wu = random_weight(type_name, ff, d, seed=SEED + 3), random_weight(type_name, ff, d, seed=SEED + 4)
    y = fused.silu_mul(fused.matmul(h, wg), fused.matmul(h, wu))
    yx = np.asarray(y)
    assert_close(yx, REF.silu_mul(REF.matmul(hx, wg), REF.matmul(hx, wu)), rtol=1e-4, atol_of_max=1e-5)
    wd = random_weight(type_name, d, ff, seed=SEED + 5)
    _matmul_ok(fused.matmul(y, wd), yx, wd)
    if fused.is_cpu:  # the sums were there to read
        assert h.sums == d and y.sums == ff


@pytest.mark.parametrize("type_name", ["Q4_1", "Q8_0", "Q6_K"])
def test_weights_at_odd_addresses_are_copied_not_read_in_place(fused, type_name):
    """A GGUF may align its tensors to a single byte; the kernels read block scales as 16- and
    32-bit words, so such a tensor is copied to an aligned buffer instead of used in place."""
    w = random_weight(type_name, 37, 512)
    raw = np.zeros(w.data.nbytes + 1, np.uint8)
    raw[1:] = w.data.reshape(-1)
    odd = Weight(w.name, w.qtype, w.cols, raw[1:].reshape(w.data.shape))
    assert odd.data.ctypes.data % 2 == 1
    x = randn(1, w.cols)
    _matmul_ok(fused.matmul(x, odd), x, w)
    _matmul_ok(fused.matmul(randn(9, w.cols), odd), randn(9, w.cols), w)
    flags = fused._weight(odd).flags
    assert not flags & fused.cl.mem_flags.USE_HOST_PTR
    if fused.weights_in_place:  # an aligned one still is read in place
        assert fused._weight(w).flags & fused.cl.mem_flags.USE_HOST_PTR


@pytest.mark.parametrize("shape", [(1, 576), (3, 77), (2, 5, 33)])
def test_residual_add_and_norm_in_one_launch(fused, shape):
    a, b, w = randn(*shape), randn(*shape, seed=3), randn(shape[-1], seed=4)
    A, B = _on_device(fused, a), _on_device(fused, b)
    _kernels(fused)
    s = fused.add(A, B)
    assert _kernels(fused) == []
    y = fused.rms_norm(s, w, 1e-5)
    assert _kernels(fused) == ["add_rms_norm_row" if fused.is_cpu else "add_rms_norm"]  # (norm.cl)
    np.testing.assert_array_equal(np.asarray(s), REF.add(a, b))  # the sum is stored too
    assert_close(np.asarray(y), REF.rms_norm(REF.add(a, b), w, 1e-5))
    s2 = fused.add(A, B)  # read without a norm: the add itself is launched
    np.testing.assert_array_equal(np.asarray(s2), REF.add(a, b))
    assert _kernels(fused) == ["add"]


@pytest.mark.parametrize("mode", [ROPE_NORM, ROPE_NEOX])
@pytest.mark.parametrize("H,Hkv,hd,n_rot,window", [(6, 2, 16, None, None), (9, 3, 64, None, 4), (4, 4, 12, 8, None)])
def test_ropes_fused_into_decode_attention(fused, mode, H, Hkv, hd, n_rot, window):
    n_ctx, layer, theta = 24, 1, 10000.0
    mine, ref = fused.new_kv_cache(2, n_ctx, Hkv, hd), REF.new_kv_cache(2, n_ctx, Hkv, hd)
    pos = 0
    for step, n in enumerate([5, 1, 1, 1, 3, 1]):
        seed = 10 * step
        q, k, v = randn(n, H, hd, seed=seed), randn(n, Hkv, hd, seed=seed + 1), randn(n, Hkv, hd, seed=seed + 2)
        p = np.arange(pos, pos + n)
        _kernels(fused)
        qr = fused.rope(_on_device(fused, q), p, theta, mode, n_rot)
        kr = fused.rope(_on_device(fused, k), p, theta, mode, n_rot)
        got = fused.attention(qr, kr, _on_device(fused, v), mine, layer, pos, 1 / np.sqrt(hd), window)
        ran = _kernels(fused)
        if n == 1:
            assert "rope" not in ran and ("attn_decode_row" if fused.is_cpu else "attn_decode") in ran
        want = REF.attention(REF.rope(q, p, theta, mode, n_rot), REF.rope(k, p, theta, mode, n_rot), v, ref, layer,
                             pos, 1 / np.sqrt(hd), window)
        assert_close(np.asarray(got), want, rtol=1e-5, atol_of_max=1e-6)
        # the rotated q, read afterwards, is launched then and matches the reference rope
        np.testing.assert_allclose(np.asarray(qr), REF.rope(q, p, theta, mode, n_rot), rtol=1e-5, atol=1e-6)
        pos += n
    hk, _ = fused.kv_to_host(mine, layer)
    np.testing.assert_allclose(hk[:pos], ref.k[layer][:pos], rtol=1e-5, atol=1e-6)  # stored rotated


@pytest.fixture(scope="module")
def gpu_layout():
    """PoCL running the kernels in the layout other devices get: rows split over work-items
    (tree reductions in local memory), as on a GPU."""
    try:
        from kernels.opencl_backend import MATMUL_GROUP, MATMUL_LX, OpenCLBackend
        b = OpenCLBackend(resident=True, fuse=True)
    except BackendError as e:
        pytest.skip(f"no usable OpenCL device: {e}")
    b.matmul_lx, b.matmul_group, b.matvec_lx, b.matvec_group = MATMUL_LX, MATMUL_GROUP, MATMUL_LX, MATMUL_GROUP
    yield b
    b.close()


@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
@pytest.mark.parametrize("rows,units,n", [(37, 3, 1), (130, 18, 1), (67, 8, 17), (7, 9, 8)])
def test_rows_split_over_work_items(gpu_layout, type_name, rows, units, n):
    be = gpu_layout
    w = random_weight(type_name, rows, cols_for(type_name, units))
    x = randn(n, w.cols)
    _matmul_ok(be.matmul(x, w), x, w)
    if n == 1:  # the fused one-token kernels too
        w2 = random_weight(type_name, rows, w.cols, seed=SEED + 1)
        h = _on_device(be, x)
        ys = [be.matmul(h, w), be.matmul(h, w2)]
        _matmul_ok(ys[0], x, w)
        _matmul_ok(ys[1], x, w2)
        xs = x * np.float32(0.01)  # gate values of a few units: silu neither 0 nor overflowing
        hs = _on_device(be, xs)
        y = be.silu_mul(be.matmul(hs, w), be.matmul(hs, w2))
        assert_close(np.asarray(y), REF.silu_mul(REF.matmul(xs, w), REF.matmul(xs, w2)), rtol=1e-4, atol_of_max=1e-5)
