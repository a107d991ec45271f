"""GGML tensor types: one table of format facts, and the reference dequantization.

Each type is stored in blocks: `block_size` weights packed into `type_size` bytes.
A row of `n` weights is therefore `n // block_size * type_size` bytes.

`dequantize(raw, qtype)` is the living definition of every type: it turns raw blocks
(a uint8 array whose last axis holds whole blocks) into float32 weights. Every faster
kernel is tested against it; it is tested bit for bit against gguf-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class QType:
    id: int
    name: str
    block_size: int  # weights per block
    type_size: int  # bytes per block

    def row_bytes(self, n: int) -> int:
        """Bytes taken by `n` consecutive weights (n must be a multiple of block_size)."""
        if n % self.block_size:
            raise ValueError(f"{self.name}: {n} weights is not a multiple of the block size {self.block_size}")
        return n // self.block_size * self.type_size


# (id, name, block_size, type_size) as in ggml.h / gguf-py constants.
_TABLE = [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),  # ggml-common.h; gguf-py 0.19 says 40
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
]

QTYPES: dict[int, QType] = {row[0]: QType(*row) for row in _TABLE}
BY_NAME: dict[str, QType] = {q.name: q for q in QTYPES.values()}

_DEQUANT: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def qtype(key: int | str | QType) -> QType:
    """Look a type up by id, name or QType."""
    if isinstance(key, QType):
        return key
    table = BY_NAME if isinstance(key, str) else QTYPES
    try:
        return table[key]
    except KeyError:
        raise KeyError(f"unknown GGML type {key!r}") from None


def can_dequantize(key: int | str | QType) -> bool:
    return qtype(key).name in _DEQUANT


DEQUANT_CHUNK_BLOCKS = 4096  # blocks dequantized per pass (their temporaries stay in the CPU cache)


def dequantize(raw: np.ndarray, key: int | str | QType, out: np.ndarray | None = None) -> np.ndarray:
    """Raw blocks -> float32 weights. `raw` is uint8 with whole blocks on its last axis;
    the result has the same leading axes and `nblocks * block_size` on the last.

    `out`: a float32 array of that shape to write the weights into (and return) instead of a
    new one, e.g. a slice of a larger cache: no temporary of the result's size is made
    (if `out` is not C-contiguous the weights go through a temporary of one pass's size)."""
    q = qtype(key)
    fn = _DEQUANT.get(q.name)
    if fn is None:
        raise NotImplementedError(f"no dequantization for GGML type {q.name}")
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raw = raw.view(np.uint8)
    if raw.shape[-1] % q.type_size:
        raise ValueError(f"{q.name}: last axis of {raw.shape[-1]} bytes is not whole {q.type_size}-byte blocks")
    lead = raw.shape[:-1]
    nblocks = raw.shape[-1] // q.type_size
    shape = (*lead, nblocks * q.block_size)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.dtype != np.float32 or out.shape != shape:
        raise ValueError(f"{q.name}: out must be float32 of shape {shape}, not {out.dtype} {out.shape}")
    blocks = raw.reshape(-1, q.type_size)
    n = len(blocks)
    step = max(1, DEQUANT_CHUNK_BLOCKS * 32 // q.block_size)
    if out.flags.c_contiguous:
        flat = out.reshape(n, q.block_size)
        for a in range(0, n, step):
            fn(blocks[a : a + step], flat[a : a + step])
    elif out.ndim == 2 and nblocks:  # e.g. a band of a column-major cache: whole rows per pass
        rows = max(1, step // nblocks)
        for r in range(0, out.shape[0], rows):
            part = blocks[r * nblocks : (r + rows) * nblocks]
            out[r : r + rows] = fn(part, np.empty((len(part), q.block_size), np.float32)).reshape(-1, out.shape[1])
    elif n:
        out[...] = dequantize(raw, q)
    return out


def _register(name: str):
    """Register `fn(blocks) -> (n, block_size) float32` as the dequantization of `name`."""
    def deco(fn):
        def into(b, out):
            out[...] = fn(b)
            return out

        _DEQUANT[name] = into
        return fn

    return deco


def _register_into(name: str):
    """Register `fn(blocks, out)`, which writes the (n, block_size) float32 weights into `out`
    (C-contiguous) and returns it."""
    def deco(fn):
        _DEQUANT[name] = fn
        return fn

    return deco


def _f16(blocks: np.ndarray, start: int, count: int = 1) -> np.ndarray:
    """`count` little-endian f16 values starting at byte `start` of each block, as f32 (n, count)."""
    return np.ascontiguousarray(blocks[:, start : start + 2 * count]).view(np.float16).astype(np.float32)


def _f16_col(blocks: np.ndarray, start: int) -> np.ndarray:
    """The little-endian f16 at byte `start` of each block, as f32 (n, 1): read through a
    float16 view of the blocks where their rows allow it (no copy of the field)."""
    if start % 2 == 0 and blocks.shape[1] % 2 == 0 and blocks.strides[1] == 1 and blocks.strides[0] % 2 == 0 \
            and blocks.ctypes.data % 2 == 0:
        return blocks.view(np.float16)[:, start // 2 : start // 2 + 1].astype(np.float32)
    return _f16(blocks, start)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) packed bytes -> (n, 32): the 16 low nibbles, then the 16 high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


# ---- plain float and integer types -------------------------------------------------

@_register("F32")
def _dq_f32(b):
    return np.ascontiguousarray(b).view(np.float32)


@_register_into("F16")
def _dq_f16(b, out):
    out[...] = np.ascontiguousarray(b).view(np.float16)
    return out


@_register("BF16")
def _dq_bf16(b):
    return (np.ascontiguousarray(b).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


@_register("F64")
def _dq_f64(b):
    return np.ascontiguousarray(b).view(np.float64).astype(np.float32)


for _name, _dt in (("I8", np.int8), ("I16", np.int16), ("I32", np.int32), ("I64", np.int64)):
    _register(_name)(lambda b, _dt=_dt: np.ascontiguousarray(b).view(_dt).astype(np.float32))


# ---- 32-weight block types -------------------------------------------------------

# The 32-weight types below write straight into `out`: low nibbles (or bytes) times the
# scale into the first half, high ones into the second, in the reference's operations and
# order (int -> f32 exactly, times d, then plus m), so the results are the same bit for bit.

def _nibble_halves(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 16) packed bytes -> their low and high nibbles, uint8 (n, 16) each."""
    return np.bitwise_and(qs, np.uint8(0x0F)), np.right_shift(qs, np.uint8(4))


@_register_into("Q4_0")
def _dq_q4_0(b, out):
    d = _f16_col(b, 0)
    for q, half in zip(_nibble_halves(b[:, 2:18]), (out[:, :16], out[:, 16:])):
        q = q.view(np.int8)
        q -= np.int8(8)
        np.multiply(q, d, out=half)
    return out


@_register_into("Q4_1")
def _dq_q4_1(b, out):
    d, m = _f16_col(b, 0), _f16_col(b, 2)
    for q, half in zip(_nibble_halves(b[:, 4:20]), (out[:, :16], out[:, 16:])):
        np.multiply(q, d, out=half)
    out += m
    return out


def _q5_quants(b: np.ndarray, qs_at: int, qh_at: int) -> np.ndarray:
    """Q5 quants 0..31 as uint8 (n, 32): nibbles (low then high) plus the fifth bits, bit j
    of the little-endian uint32 at `qh_at` being weight j's."""
    q = np.unpackbits(b[:, qh_at : qh_at + 4], axis=1, bitorder="little")
    q <<= np.uint8(4)
    lo, hi = _nibble_halves(b[:, qs_at : qs_at + 16])
    q[:, :16] |= lo
    q[:, 16:] |= hi
    return q


@_register_into("Q5_0")
def _dq_q5_0(b, out):
    d = _f16_col(b, 0)
    q = _q5_quants(b, 6, 2).view(np.int8)
    q -= np.int8(16)
    return np.multiply(q, d, out=out)


@_register_into("Q5_1")
def _dq_q5_1(b, out):
    d, m = _f16_col(b, 0), _f16_col(b, 2)
    np.multiply(_q5_quants(b, 8, 4), d, out=out)
    out += m
    return out


@_register_into("Q8_0")
def _dq_q8_0(b, out):
    return np.multiply(b[:, 2:34].view(np.int8), _f16_col(b, 0), out=out)


@_register("Q8_1")
def _dq_q8_1(b):
    d = _f16(b, 0)
    return b[:, 4:36].view(np.int8).astype(np.float32) * d


# ---- 256-weight "K" super-block types ------------------------------------------------
#
# A K block holds QK_K weights split into 8 sub-blocks of 32 or 16 sub-blocks of 16, each
# with its own small integer scale (and, for some types, min), which in turn are scaled by
# one or two f16 super-block factors. Quants are packed as bit fields: `_bit_fields` cuts
# every byte into its fields, lowest bits first, so that field j of byte i lands at [j, i].
# For all these types that order is exactly weight order within a run of packed bytes.

QK_K = 256  # weights per K super-block


def _split(blocks: np.ndarray, *sizes: int) -> list[np.ndarray]:
    """Cut each block into consecutive byte fields of the given sizes (which must add up to
    the whole block)."""
    assert sum(sizes) == blocks.shape[1], (sizes, blocks.shape)
    return np.split(blocks, np.cumsum(sizes)[:-1], axis=1)


def _scalar(field: np.ndarray, dtype: str) -> np.ndarray:
    """A (n, itemsize) byte field holding one little-endian `dtype` value, as f32 (n, 1)."""
    return np.ascontiguousarray(field).view(dtype).astype(np.float32)


def _bit_fields(packed: np.ndarray, width: int) -> np.ndarray:
    """Split every byte of `packed` (..., k) into its 8 // width fields of `width` bits,
    lowest bits first: uint8 (..., 8 // width, k) with field j of byte i at [..., j, i]."""
    shifts = np.arange(0, 8, width, dtype=np.uint8)[:, None]
    fields = packed[..., None, :] >> shifts
    fields &= np.uint8((1 << width) - 1)
    return fields


def _k4_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and 8 six-bit mins that Q4_K and Q5_K pack into 12 bytes, as
    uint8 (n, 8) each. Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 hold mins
    0-3 likewise; bytes 8-11 hold the low 4 bits of scales 4-7 (low nibble) and of mins 4-7
    (high nibble), whose top 2 bits sit in the spare top bits of bytes 0-3 and 4-7."""
    lo_sc, lo_m, hi = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    six = np.uint8(0x3F)  # low 6 bits
    sc = np.concatenate([lo_sc & six, (hi & 0x0F) | ((lo_sc >> 6) << 4)], axis=1)
    m = np.concatenate([lo_m & six, (hi >> 4) | ((lo_m >> 6) << 4)], axis=1)
    return sc, m


def _combine(low: np.ndarray, high: np.ndarray, shift: int, offset: int = 0) -> np.ndarray:
    """Whole quants from their bit-field parts: `(low | high << shift) - offset`, as int8.
    Both parts are fresh uint8 arrays of the same shape; `high` is reused for the result."""
    high <<= shift
    high |= low
    q = high.view(np.int8)
    if offset:
        q -= np.int8(offset)
    return q


def _scaled(q: np.ndarray, scale: np.ndarray, mins: np.ndarray | None = None) -> np.ndarray:
    """K-block weights from the quants `q` (n, any shape holding QK_K) and per-sub-block
    `scale` and `mins` (n, n_sub), both already multiplied by their super-block factor:
    `q * scale - mins` in float32, (n, QK_K). That rounding order (super-block factor times
    sub-block scale first, then times q, then minus the min) is ggml's, so results are bit-exact."""
    n, n_sub = scale.shape
    w = np.multiply(q.reshape(n, n_sub, QK_K // n_sub), scale[:, :, None], dtype=np.float32)
    if mins is not None:
        w -= mins[:, :, None]
    return w.reshape(n, QK_K)


# Q2_K, 84 bytes: scales[16] qs[64] d:f16 dmin:f16. 16 sub-blocks of 16 weights.
#   scales: one byte per sub-block, low nibble = scale, high nibble = min.
#   qs: 2-bit quants in two halves of 32 bytes; the four 2-bit fields of a byte (lowest
#       first) are in four consecutive runs of 32 weights.
#   w = d * scale * q - dmin * min
@_register("Q2_K")
def _dq_q2_k(b):
    scales, qs, d, dmin = _split(b, 16, 64, 2, 2)
    q = _bit_fields(qs.reshape(len(b), 2, 32), 2)
    return _scaled(q, _scalar(d, "<f2") * (scales & 0x0F), _scalar(dmin, "<f2") * (scales >> 4))


# Q3_K, 110 bytes: hmask[32] qs[64] scales[12] d:f16. 16 sub-blocks of 16 weights.
#   hmask: the third bit of every quant; bit j of byte i belongs to weight 32*j + i.
#   qs: the low 2 bits, packed as in Q2_K.
#   scales: 16 six-bit scales stored +32. Bytes 0-7 hold their low 4 bits (scales 0-7 in
#       the low nibbles, 8-15 in the high ones); bytes 8-11 hold the top 2 bits, 2-bit
#       field j of byte i being scale 4*j + i.
#   q = (low | high << 2) - 4 (a clear mask bit means -4), w = d * (scale - 32) * q
@_register("Q3_K")
def _dq_q3_k(b):
    hmask, qs, scales, d = _split(b, 32, 64, 12, 2)
    n = len(b)
    sc_low = _bit_fields(scales[:, 0:8], 4).reshape(n, 16)
    sc_high = _bit_fields(scales[:, 8:12], 2).reshape(n, 16)
    low = _bit_fields(qs.reshape(n, 2, 32), 2).reshape(n, QK_K)
    high = _bit_fields(hmask, 1).reshape(n, QK_K)
    return _scaled(_combine(low, high, 2, 4), _scalar(d, "<f2") * _combine(sc_low, sc_high, 4, 32))


# Q4_K, 144 bytes: d:f16 dmin:f16 scales[12] qs[128]. 8 sub-blocks of 32 weights.
#   scales: 8 six-bit scales and 8 six-bit mins (see `_k4_scales_mins`).
#   qs: 4 runs of 32 bytes; each run holds two sub-blocks, low nibbles then high nibbles.
#   w = d * scale * q - dmin * min
@_register("Q4_K")
def _dq_q4_k(b):
    d, dmin, scales, qs = _split(b, 2, 2, 12, 128)
    sc, m = _k4_scales_mins(scales)
    q = _bit_fields(qs.reshape(len(b), 4, 32), 4)
    return _scaled(q, _scalar(d, "<f2") * sc, _scalar(dmin, "<f2") * m)


# Q5_K, 176 bytes: d:f16 dmin:f16 scales[12] qh[32] qs[128]. 8 sub-blocks of 32 weights.
#   scales, qs: as in Q4_K (qs holds the low 4 bits).
#   qh: the fifth bit of every quant; bit j of byte i belongs to weight 32*j + i.
#   w = d * scale * (low | high << 4) - dmin * min
@_register("Q5_K")
def _dq_q5_k(b):
    d, dmin, scales, qh, qs = _split(b, 2, 2, 12, 32, 128)
    n = len(b)
    sc, m = _k4_scales_mins(scales)
    low = _bit_fields(qs.reshape(n, 4, 32), 4).reshape(n, QK_K)
    high = _bit_fields(qh, 1).reshape(n, QK_K)
    return _scaled(_combine(low, high, 4), _scalar(d, "<f2") * sc, _scalar(dmin, "<f2") * m)


# Q6_K, 210 bytes: ql[128] qh[64] scales[16] d:f16. 16 sub-blocks of 16 weights.
#   Two halves of 128 weights, each using 64 bytes of ql and 32 bytes of qh.
#   ql: the low 4 bits; within a half, the low nibbles of its 64 bytes are weights 0-63
#       and the high nibbles weights 64-127.
#   qh: the top 2 bits; within a half, 2-bit field j of byte i belongs to weight 32*j + i.
#   scales: one signed int8 per sub-block.
#   w = d * scale * ((low | high << 4) - 32)
@_register("Q6_K")
def _dq_q6_k(b):
    ql, qh, scales, d = _split(b, 128, 64, 16, 2)
    n = len(b)
    low = _bit_fields(ql.reshape(n, 2, 64), 4).reshape(n, QK_K)
    high = _bit_fields(qh.reshape(n, 2, 32), 2).reshape(n, QK_K)
    return _scaled(_combine(low, high, 4, 32), _scalar(d, "<f2") * scales.view(np.int8))


# Q8_K, 292 bytes: d:f32 qs[256] bsums[32]. One scale for the whole block.
#   qs: signed int8 quants. bsums: 16 int16 sums of 16 quants each (only used by dot
#   products, not needed here).
#   w = d * q
@_register("Q8_K")
def _dq_q8_k(b):
    d, qs, _bsums = _split(b, 4, QK_K, 32)
    return _scalar(d, "<f4") * qs.view(np.int8)
