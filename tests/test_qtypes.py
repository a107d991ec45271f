"""kernels.qtypes: the type table and the reference dequantization, bit for bit against gguf-py."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `kernels`

import gguf  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402

from kernels import qtypes  # noqa: E402
from kernels.qtypes import BY_NAME, QTYPES, QType, can_dequantize, dequantize  # noqa: E402

SEED = 20240611

# Leading shapes (rows...) and blocks per row to try for every type.
SHAPES = [((1,), 1), ((3,), 5), ((), 4), ((2, 3), 2), ((16,), 7)]

# The types gguf-py must be able to check for us (if it ever stops, we want to know).
MUST_COMPARE = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}

# Where each block keeps its float scale fields: (byte offset, dtype). Everything else in a
# quantized block is integer bits, for which any byte pattern is valid.
SCALE_FIELDS: dict[str, list[tuple[int, str]]] = {
    "Q4_0": [(0, "<f2")],
    "Q4_1": [(0, "<f2"), (2, "<f2")],
    "Q5_0": [(0, "<f2")],
    "Q5_1": [(0, "<f2"), (2, "<f2")],
    "Q8_0": [(0, "<f2")],
    "Q8_1": [(0, "<f2"), (2, "<f2")],
    "Q2_K": [(80, "<f2"), (82, "<f2")],
    "Q3_K": [(108, "<f2")],
    "Q4_K": [(0, "<f2"), (2, "<f2")],
    "Q5_K": [(0, "<f2"), (2, "<f2")],
    "Q6_K": [(208, "<f2")],
    "Q8_K": [(0, "<f4")],
}
# The plain float types: every element is one float of this dtype.
FLOAT_ELEMENTS = {"F32": "<f4", "F16": "<f2", "BF16": "bf16", "F64": "<f8"}


def _gguf_can(name: str) -> bool:
    if name not in GGMLQuantizationType.__members__:
        return False
    q = BY_NAME[name]
    try:
        gguf.quants.dequantize(np.zeros((1, q.type_size), np.uint8), GGMLQuantizationType[name])
    except NotImplementedError:
        return False
    return True


REGISTERED = sorted(qtypes._DEQUANT)
COMPARED = [name for name in REGISTERED if _gguf_can(name)]


# ---- helpers ------------------------------------------------------------------------

# Float formats by their bits: (unsigned int type of that width, exponent mask).
FLOAT_BITS = {
    "<f2": (np.uint16, 0x7C00),
    "bf16": (np.uint16, 0x7F80),
    "<f4": (np.uint32, 0x7F800000),
    "<f8": (np.uint64, 0x7FF0000000000000),
}


def _finite_bits(rng: np.random.Generator, shape: tuple[int, ...], fmt: str) -> np.ndarray:
    """Random finite floats of format `fmt` as raw bytes (*shape[:-1], shape[-1] * size):
    any sign, exponent (zeros and subnormals included) and mantissa, except that an
    all-ones exponent (inf/NaN) loses its top bit."""
    uint, exp = FLOAT_BITS[fmt]
    bits = rng.integers(0, np.iinfo(uint).max, size=shape, dtype=uint, endpoint=True)
    top = uint(1) << uint(8 * bits.itemsize - 2)  # the exponent's top bit, just below the sign
    bits[(bits & uint(exp)) == uint(exp)] &= ~top
    return bits.view(np.uint8)


def random_blocks(name: str, lead: tuple[int, ...], nblocks: int, rng: np.random.Generator, finite: bool) -> np.ndarray:
    """uint8 raw data of shape (*lead, nblocks * type_size). With `finite`, every float field
    holds a random finite value, so the weights are finite too; otherwise the bytes are fully
    random (NaNs and infinities included)."""
    q = BY_NAME[name]
    raw = rng.integers(0, 256, size=(*lead, nblocks * q.type_size), dtype=np.uint8)
    if not finite:
        return raw
    if name in FLOAT_ELEMENTS:
        return _finite_bits(rng, (*lead, nblocks), FLOAT_ELEMENTS[name]).reshape(raw.shape)
    blocks = raw.reshape(-1, q.type_size)
    for offset, dtype in SCALE_FIELDS.get(name, []):
        size = np.dtype(dtype).itemsize
        blocks[:, offset : offset + size] = _finite_bits(rng, (len(blocks), 1), dtype)
    return raw


def quiet(fn, *args):
    """Call fn with NaN/overflow warnings silenced (random bytes make NaNs on purpose)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args)


def reference(raw: np.ndarray, name: str) -> np.ndarray:
    return quiet(gguf.quants.dequantize, raw, GGMLQuantizationType[name])


def assert_bits_equal(ours: np.ndarray, ref: np.ndarray) -> None:
    """Equal bit for bit, except that any NaN matches any NaN (payloads may differ by platform)."""
    ref = np.asarray(ref)
    assert ours.dtype == np.float32 and ref.dtype == np.float32
    assert ours.shape == ref.shape
    ours_nan, ref_nan = np.isnan(ours), np.isnan(ref)
    np.testing.assert_array_equal(ours_nan, ref_nan, err_msg="NaNs in different places")
    a, b = ours.view(np.uint32)[~ours_nan], ref.view(np.uint32)[~ref_nan]
    bad = np.flatnonzero(a != b)
    assert bad.size == 0, f"{bad.size} weights differ, first: ours {a[bad[0]]:#010x} vs gguf-py {b[bad[0]]:#010x}"


# ---- bit for bit against gguf-py ----------------------------------------------------

def test_gguf_py_checks_the_types_we_expect():
    assert MUST_COMPARE <= set(COMPARED)


@pytest.mark.parametrize("name", COMPARED)
@pytest.mark.parametrize("lead,nblocks", SHAPES, ids=lambda v: str(v))
def test_matches_gguf_py_finite(name, lead, nblocks):
    rng = np.random.default_rng([SEED, BY_NAME[name].id, len(lead), nblocks])
    raw = random_blocks(name, lead, nblocks, rng, finite=True)
    ours = dequantize(raw, name)
    assert ours.shape == (*lead, nblocks * BY_NAME[name].block_size)
    assert np.isfinite(ours).all()
    assert_bits_equal(ours, reference(raw, name))


@pytest.mark.parametrize("name", COMPARED)
def test_matches_gguf_py_random_bytes(name):
    rng = np.random.default_rng([SEED, BY_NAME[name].id, 1])
    raw = random_blocks(name, (6,), 11, rng, finite=False)
    assert_bits_equal(quiet(dequantize, raw, name), reference(raw, name))


def test_q8_k_matches_its_struct():
    # gguf-py cannot dequantize Q8_K, so read the ggml struct directly:
    # block_q8_K { float d; int8_t qs[256]; int16_t bsums[16]; }
    struct = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])
    assert struct.itemsize == BY_NAME["Q8_K"].type_size
    rng = np.random.default_rng([SEED, 15])
    for finite in (True, False):
        raw = random_blocks("Q8_K", (3,), 5, rng, finite=finite)
        blocks = raw.reshape(-1, struct.itemsize).view(struct)[:, 0]
        expected = quiet(np.multiply, blocks["d"][:, None], blocks["qs"].astype(np.float32))
        assert_bits_equal(quiet(dequantize, raw, "Q8_K"), expected.reshape(3, 5 * 256))


# ---- shapes and inputs --------------------------------------------------------------

@pytest.mark.parametrize("name", REGISTERED)
def test_empty_and_keys(name):
    q = BY_NAME[name]
    assert dequantize(np.zeros((0, 2 * q.type_size), np.uint8), name).shape == (0, 2 * q.block_size)
    raw = random_blocks(name, (2,), 3, np.random.default_rng([SEED, q.id, 2]), finite=False)
    by_name = quiet(dequantize, raw, name)
    assert by_name.dtype == np.float32 and by_name.shape == (2, 3 * q.block_size)
    assert_bits_equal(quiet(dequantize, raw, q.id), by_name)
    assert_bits_equal(quiet(dequantize, raw, q), by_name)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "Q6_K", "F16"])
def test_non_contiguous_and_non_uint8_input(name):
    q = BY_NAME[name]
    rng = np.random.default_rng([SEED, q.id, 3])
    wide = random_blocks(name, (4,), 6, rng, finite=True)
    part = wide[:, q.type_size : 4 * q.type_size]  # blocks 1..3 of every row, a strided view
    expected = dequantize(np.ascontiguousarray(part), name)
    assert_bits_equal(dequantize(part, name), expected)
    assert_bits_equal(dequantize(np.ascontiguousarray(part).view(np.int8), name), expected)


# ---- the table ----------------------------------------------------------------------

# gguf-py 0.19 lists Q8_1 as 40 bytes; ggml's block_q8_1 is 36 (f16 d, f16 s, int8 qs[32]),
# fixed by a static_assert in ggml-common.h.
GGUF_PY_SIZE_BUGS = {"Q8_1"}


def test_q8_1_is_ggml_size():
    assert (QTYPES[9].block_size, QTYPES[9].type_size) == (32, 36)


def test_table_matches_gguf_constants():
    checked = 0
    for q in QTYPES.values():
        if q.name not in GGMLQuantizationType.__members__:
            continue
        t = GGMLQuantizationType[q.name]
        assert q.id == t.value, q.name
        if t in GGML_QUANT_SIZES and q.name not in GGUF_PY_SIZE_BUGS:
            assert (q.block_size, q.type_size) == GGML_QUANT_SIZES[t], q.name
            checked += 1
    assert checked >= len(MUST_COMPARE)


def test_table_is_consistent():
    assert len(QTYPES) == len(BY_NAME)
    for key, q in QTYPES.items():
        assert key == q.id and BY_NAME[q.name] is q
        assert qtypes.qtype(q.id) is q and qtypes.qtype(q.name) is q and qtypes.qtype(q) is q


def test_row_bytes():
    assert BY_NAME["Q4_K"].row_bytes(512) == 2 * 144
    assert BY_NAME["Q8_0"].row_bytes(0) == 0
    assert BY_NAME["F32"].row_bytes(7) == 28
    for bad in (1, 100, 257):
        with pytest.raises(ValueError, match="not a multiple of the block size 256"):
            BY_NAME["Q6_K"].row_bytes(bad)
    with pytest.raises(ValueError, match="Q4_0"):
        BY_NAME["Q4_0"].row_bytes(33)


# ---- errors and can_dequantize ------------------------------------------------------

def test_unknown_type():
    raw = np.zeros(18, np.uint8)
    with pytest.raises(KeyError, match="unknown GGML type 'Q9_9'"):
        dequantize(raw, "Q9_9")
    with pytest.raises(KeyError, match="unknown GGML type 999"):
        dequantize(raw, 999)


def test_known_type_without_dequantization():
    with pytest.raises(NotImplementedError, match="no dequantization for GGML type IQ2_XXS"):
        dequantize(np.zeros(66, np.uint8), "IQ2_XXS")


@pytest.mark.parametrize("name,nbytes", [("Q4_K", 145), ("Q4_K", 143), ("Q8_0", 35), ("F32", 6), ("Q6_K", 1)])
def test_last_axis_not_whole_blocks(name, nbytes):
    q = BY_NAME[name]
    with pytest.raises(ValueError, match=f"{name}: last axis of {nbytes} bytes is not whole {q.type_size}-byte blocks"):
        dequantize(np.zeros((2, nbytes), np.uint8), name)


def test_can_dequantize():
    for name in MUST_COMPARE | {"Q8_K", "Q8_1", "F64", "I8", "I16", "I32", "I64"}:
        assert can_dequantize(name), name
        assert can_dequantize(BY_NAME[name].id) and can_dequantize(BY_NAME[name])
    for name in ("IQ2_XXS", "IQ4_NL", "TQ1_0", "MXFP4"):
        assert not can_dequantize(name), name
    with pytest.raises(KeyError):
        can_dequantize("Q9_9")
    assert isinstance(BY_NAME["Q4_K"], QType)


# ---- dequantizing into a destination ----------------------------------------------------

@pytest.mark.parametrize("name", REGISTERED)
def test_out_gives_the_same_bits(name):
    """dequantize(raw, q, out=...) writes exactly what dequantize(raw, q) returns: into a
    C-contiguous array, a row band of a column-major one, and across several passes."""
    from kernels import qtypes

    q = BY_NAME[name]
    rng = np.random.default_rng([SEED, q.id, 4])
    raw = random_blocks(name, (7,), 5, rng, finite=True)
    expected = quiet(dequantize, raw, name)
    out = np.full(expected.shape, np.nan, np.float32)
    assert quiet(dequantize, raw, name, out) is out
    assert_bits_equal(out, expected)
    cache = np.full((9, expected.shape[1]), np.nan, np.float32, order="F")
    assert quiet(dequantize, raw, name, cache[1:8]).base is cache
    assert_bits_equal(cache[1:8], expected)
    assert np.isnan(cache[0]).all() and np.isnan(cache[8]).all()
    old = qtypes.DEQUANT_CHUNK_BLOCKS
    try:
        qtypes.DEQUANT_CHUNK_BLOCKS = 1  # a pass per block (or a row, column-major)
        for dest in (np.empty_like(expected), np.empty_like(expected, order="F")):
            assert_bits_equal(quiet(dequantize, raw, name, dest), expected)
    finally:
        qtypes.DEQUANT_CHUNK_BLOCKS = old


def test_out_must_fit():
    raw = np.zeros((2, 18), np.uint8)
    with pytest.raises(ValueError, match="out must be float32 of shape"):
        dequantize(raw, "Q4_0", out=np.empty((2, 31), np.float32))
    with pytest.raises(ValueError, match="out must be float32"):
        dequantize(raw, "Q4_0", out=np.empty((2, 32), np.float64))
