"""Synthetic GGUF files: a writer, and tiny random llama models. Clearly labelled as
synthetic (`general.name` says so); for unit and scale tests, never instead of a real model.

    write_gguf(path, metadata, tensors)   # tensors: name -> (qtype name, dims, raw bytes)
    tiny_llama(path, n_layer=2, ...)      # a runnable random llama model with a byte vocabulary
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from kernels.qtypes import qtype

from .atomic import atomic_path


def _string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _value(v: Any) -> tuple[int, bytes]:
    """(value type, encoded value) for a Python or numpy value."""
    if isinstance(v, (str, bytes)):
        return 8, _string(v)
    if isinstance(v, bool):
        return 7, struct.pack("<?", v)
    if isinstance(v, np.generic):  # a typed scalar: np.uint32(32) -> uint32
        t, enc = _value(np.asarray([v]))
        return struct.unpack_from("<I", enc)[0], enc[12:]
    if isinstance(v, int):
        return (5, struct.pack("<i", v)) if -(2**31) <= v < 2**31 else (11, struct.pack("<q", v))
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, np.ndarray):
        codes = {np.dtype("uint8"): 0, np.dtype("int8"): 1, np.dtype("uint16"): 2, np.dtype("int16"): 3,
                 np.dtype("uint32"): 4, np.dtype("int32"): 5, np.dtype("float32"): 6, np.dtype("bool"): 7,
                 np.dtype("uint64"): 10, np.dtype("int64"): 11, np.dtype("float64"): 12}
        et = codes[v.dtype]
        return 9, struct.pack("<IQ", et, v.size) + v.astype(v.dtype.newbyteorder("<")).tobytes()
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, str) for x in v):
            return 9, struct.pack("<IQ", 8, len(v)) + b"".join(_string(x) for x in v)
        if all(isinstance(x, float) for x in v):
            return _value(np.asarray(v, np.float32))
        return _value(np.asarray(v, np.int32))
    raise TypeError(f"cannot encode metadata value {v!r}")


def gguf_bytes(metadata: dict[str, Any], tensors: dict[str, tuple[str, tuple[int, ...], bytes]],
               version: int = 3, alignment: int = 32) -> bytes:
    """The bytes of a GGUF file; tensors map name -> (type name, dims in GGUF order, raw data)."""
    head = [b"GGUF", struct.pack("<IQQ", version, len(tensors), len(metadata))]
    for k, v in metadata.items():
        t, enc = _value(v)
        head += [_string(k), struct.pack("<I", t), enc]
    offset, blobs = 0, []
    for name, (tname, dims, raw) in tensors.items():
        q = qtype(tname)
        expect = int(np.prod(dims)) // q.block_size * q.type_size
        if len(raw) != expect:
            raise ValueError(f"{name}: {len(raw)} bytes given, {q.name} {dims} needs {expect}")
        head += [_string(name), struct.pack("<I", len(dims)), struct.pack(f"<{len(dims)}Q", *dims),
                 struct.pack("<IQ", q.id, offset)]
        pad = -len(raw) % alignment
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    header = b"".join(head)
    header += b"\0" * (-len(header) % alignment)
    return header + b"".join(blobs)


def write_gguf(path: str | os.PathLike, metadata: dict, tensors: dict, **kw) -> None:
    data = gguf_bytes(metadata, tensors, **kw)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def quantize_q8_0(x: np.ndarray) -> bytes:
    """Rows of float32 -> Q8_0 blocks (d = max|x| / 127 per 32 weights), as ggml does."""
    b = x.astype(np.float32).reshape(-1, 32)
    d = np.abs(b).max(axis=1) / 127.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0.0)
    q = np.round(b * inv[:, None]).astype(np.int8)
    out = np.zeros((b.shape[0], 34), np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def byte_vocab() -> tuple[list[str], list[str], np.ndarray]:
    """A gpt2-style byte-level vocabulary: 3 control tokens + the 256 byte symbols, no merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = ByteLevel.alphabet()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + sorted(symbols)
    types = np.array([3, 3, 3] + [1] * len(symbols), np.int32)
    return tokens, [], types


def tiny_llama(path: str | os.PathLike, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2,
               n_ff: int = 96, seed: int = 0, weight_type: str = "Q8_0", n_ctx: int = 256) -> dict[str, np.ndarray]:
    """Write a random llama model; returns its float32 weights (as dequantized) by tensor name."""
    rng = np.random.default_rng(seed)
    tokens, merges, types = byte_vocab()
    n_vocab = len(tokens)
    n_vocab_padded = -(-n_vocab // 32) * 32
    tokens += [f"<pad{i}>" for i in range(n_vocab_padded - n_vocab)]
    types = np.concatenate([types, np.full(n_vocab_padded - n_vocab, 5, np.int32)])
    hd = n_embd // n_head
    meta = {
        "general.architecture": "llama",
        "general.name": "SYNTHETIC tiny llama (random weights)",
        "general.alignment": np.uint32(32),
        "llama.block_count": n_layer, "llama.context_length": n_ctx, "llama.embedding_length": n_embd,
        "llama.feed_forward_length": n_ff, "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head_kv, "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": n_vocab_padded,
        "llama.rope.dimension_count": hd,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges or [],
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.add_bos_token": False,
    }
    from kernels.qtypes import dequantize

    tensors, dense = {}, {}

    def mat(name, rows, cols, scale):
        x = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if weight_type == "F32":
            raw = x.tobytes()
        elif weight_type == "Q8_0":
            raw = quantize_q8_0(x)
        else:
            raise ValueError(f"tiny_llama writes F32 or Q8_0 weights, not {weight_type}")
        tensors[name] = (weight_type, (cols, rows), raw)
        dense[name] = dequantize(np.frombuffer(raw, np.uint8).reshape(rows, -1), weight_type)

    def vec(name, n):
        x = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
        tensors[name] = ("F32", (n,), x.tobytes())
        dense[name] = x

    mat("token_embd.weight", n_vocab_padded, n_embd, 1.0)
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_embd, n_embd, n_embd**-0.5)
        mat(p + "attn_k.weight", n_head_kv * hd, n_embd, n_embd**-0.5)
        mat(p + "attn_v.weight", n_head_kv * hd, n_embd, n_embd**-0.5)
        mat(p + "attn_output.weight", n_embd, n_embd, n_embd**-0.5)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd, n_embd**-0.5)
        mat(p + "ffn_up.weight", n_ff, n_embd, n_embd**-0.5)
        mat(p + "ffn_down.weight", n_embd, n_ff, n_ff**-0.5)
    vec("output_norm.weight", n_embd)
    write_gguf(path, meta, tensors)
    return dense
