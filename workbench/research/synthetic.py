"""Synthetic GGUF files with real architectures' shapes, and what one token touches in them.

Random weights, clearly labelled: `general.name` starts with "SYNTHETIC" and says the
weights are random. They let the loading and touch measurements run at the sizes that
matter (a 7B llama in Q4_0 is ~3.8 GB) without a real model. The text they produce is noise.

    layout = plan("llama-7b", "Q4_0")            # dry run: the tensor table, offsets, sizes
    layout.file_bytes                            # 3,791,e9-ish; nothing written
    write("/tmp/llama-7b-synthetic.gguf", "llama-7b", "Q4_0")   # streaming, atomic rename
    m = workbench.load("/tmp/llama-7b-synthetic.gguf")           # byte-level tokenizer included

The writer is streaming: the header (metadata, tensor table) is built first from the shapes
alone, then every tensor is generated and written in chunks of `chunk_bytes`, so memory stays
bounded whatever the file size; the file appears under its name only when complete (written
beside it, fsynced, renamed).

Quantized tensors are random bytes with a sane f16 scale written into every block (and a min
for Q4_1) so that each weight matrix has standard deviation ~ 1/sqrt(cols): activations stay
in range through all layers. Norm weights are F32 near 1.

Measurement helpers (used for the numbers in the project notes; not run by the tests on the
big file): `read_whole_file` (cold or warm sequential read of the file), `measure_tokens`
(load, then decode tokens one at a time with the recorder on: time, page faults, logical
touch vs mapped vs cached per token, and the touch map) and `touch_pages` (I/O only: fault in
exactly the pages of a touch map through the mapping, cold or warm).
"""

from __future__ import annotations

import os
import resource
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kernels.qtypes import qtype

from ..atomic import atomic_path
from ..loading import rss
from ..synth import _string, _value, byte_vocab

# ---- shapes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchShape:
    """The shape facts of a llama-family model (what the tensor table follows from)."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_ctx: int = 4096
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    tied: bool = False  # no output.weight: the output reuses token_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Published configurations (config.json of each model family).
SHAPES: dict[str, ArchShape] = {
    "llama-7b": ArchShape("llama-7b", 32, 4096, 32, 32, 11008, 32000, 4096, 10000.0, 1e-5),
    "llama-13b": ArchShape("llama-13b", 40, 5120, 40, 40, 13824, 32000, 4096, 10000.0, 1e-5),
    "mistral-7b": ArchShape("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768, 1e6, 1e-5),
    "llama3-8b": ArchShape("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.0, 1e-5),
}


def small_shape(n_layer: int = 2, n_embd: int = 256, n_head: int = 4, n_head_kv: int = 2, n_ff: int = 704,
                n_vocab: int = 512, tied: bool = False) -> ArchShape:
    """A small llama shape for tests (every dimension a multiple of 32 for the 32-weight types)."""
    return ArchShape(f"small-{n_layer}x{n_embd}", n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, 512,
                     10000.0, 1e-5, tied)


def _shape(shape: str | ArchShape) -> ArchShape:
    if isinstance(shape, ArchShape):
        return shape
    try:
        return SHAPES[shape]
    except KeyError:
        raise KeyError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}") from None


# ---- random quant blocks ----------------------------------------------------------------------
#
# Per type: the rms of the dequantized quant values (weights are q * d [+ m]) for uniformly
# random bits, and where its f16 fields sit. Q4_0: q - 8 in [-8, 7], E[q^2] = 21.5; Q4_1:
# q in [0, 15] with m = -7.5 d (centred), var 21.25; Q5_0: q - 16 in [-16, 15], E = 85.5;
# Q8_0: int8, E[q^2] = 5461.5.
_RANDOM_QUANTS = {
    "Q4_0": (np.sqrt(21.5), False),
    "Q4_1": (np.sqrt(21.25), True),
    "Q5_0": (np.sqrt(85.5), False),
    "Q8_0": (np.sqrt(5461.5), False),
}
WEIGHT_TYPES = ("F32", "F16") + tuple(_RANDOM_QUANTS)


def _random_blocks(rng: np.random.Generator, tname: str, n_weights: int, std: float) -> np.ndarray:
    """Raw bytes of `n_weights` random weights of type `tname` with standard deviation ~std."""
    if tname == "F32":
        return (rng.standard_normal(n_weights, np.float32) * np.float32(std)).view(np.uint8)
    if tname == "F16":
        return (rng.standard_normal(n_weights, np.float32) * np.float32(std)).astype(np.float16).view(np.uint8)
    q = qtype(tname)
    rms, has_min = _RANDOM_QUANTS[tname]
    nb = n_weights // q.block_size
    raw = rng.integers(0, 256, size=(nb, q.type_size), dtype=np.uint8)
    d = (std / rms) * rng.uniform(0.5, 1.5, nb)
    raw[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(nb, 2)
    if has_min:
        raw[:, 2:4] = (-7.5 * d).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return raw.reshape(-1)


# ---- the layout (dry run) -----------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    name: str
    type: str
    dims: tuple[int, ...]  # GGUF order: dims[0] is the row length
    offset: int  # absolute byte offset in the file
    nbytes: int
    role: str  # "embed", "norm", "matmul", "output"

    @property
    def rows(self) -> int:
        return int(np.prod(self.dims[1:])) if len(self.dims) > 1 else 1

    @property
    def row_bytes(self) -> int:
        return qtype(self.type).row_bytes(self.dims[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order: (rows, cols)."""
        return tuple(reversed(self.dims))


@dataclass
class Layout:
    """Everything about a synthetic file except its random bytes: what `plan` returns and
    what `write` writes."""

    shape: ArchShape
    weight_type: str
    metadata: dict
    tensors: list[TensorEntry]
    data_offset: int  # where tensor data starts (the header, padded to the alignment)
    file_bytes: int
    alignment: int
    header: bytes = field(repr=False, default=b"")

    def table(self) -> list[dict]:
        return [{"name": t.name, "type": t.type, "shape": t.shape, "offset": t.offset, "nbytes": t.nbytes}
                for t in self.tensors]

    def by_name(self) -> dict[str, TensorEntry]:
        return {t.name: t for t in self.tensors}

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _tensor_specs(s: ArchShape, wt: str) -> list[tuple[str, str, tuple[int, ...], str]]:
    """(name, type, GGUF dims, role) in file order: token_embd, the blocks, output_norm, output."""
    kv = s.n_head_kv * s.head_dim
    out = [("token_embd.weight", wt, (s.n_embd, s.n_vocab), "embed")]
    for i in range(s.n_layer):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", "F32", (s.n_embd,), "norm"),
                (p + "attn_q.weight", wt, (s.n_embd, s.n_embd), "matmul"),
                (p + "attn_k.weight", wt, (s.n_embd, kv), "matmul"),
                (p + "attn_v.weight", wt, (s.n_embd, kv), "matmul"),
                (p + "attn_output.weight", wt, (s.n_embd, s.n_embd), "matmul"),
                (p + "ffn_norm.weight", "F32", (s.n_embd,), "norm"),
                (p + "ffn_gate.weight", wt, (s.n_embd, s.n_ff), "matmul"),
                (p + "ffn_up.weight", wt, (s.n_embd, s.n_ff), "matmul"),
                (p + "ffn_down.weight", wt, (s.n_ff, s.n_embd), "matmul")]
    out.append(("output_norm.weight", "F32", (s.n_embd,), "norm"))
    if not s.tied:
        out.append(("output.weight", wt, (s.n_embd, s.n_vocab), "output"))
    return out


def _metadata(s: ArchShape, wt: str, alignment: int, name: str | None) -> dict:
    tokens, _, types = byte_vocab()
    if s.n_vocab < len(tokens):
        raise ValueError(f"n_vocab {s.n_vocab} is smaller than the byte vocabulary ({len(tokens)} tokens)")
    pad = s.n_vocab - len(tokens)
    tokens = tokens + [f"<unused{i}>" for i in range(pad)]
    types = np.concatenate([types, np.full(pad, 5, np.int32)])  # 5 = unused
    return {
        "general.architecture": "llama",
        "general.name": name or f"SYNTHETIC {s.name} shape, {wt}, random weights (not a trained model)",
        "general.description": "Synthetic file written by workbench.research.synthetic: real shapes, random weights.",
        "general.alignment": np.uint32(alignment),
        "llama.block_count": s.n_layer, "llama.context_length": s.n_ctx, "llama.embedding_length": s.n_embd,
        "llama.feed_forward_length": s.n_ff, "llama.attention.head_count": s.n_head,
        "llama.attention.head_count_kv": s.n_head_kv, "llama.rope.freq_base": float(s.rope_base),
        "llama.attention.layer_norm_rms_epsilon": float(s.rms_eps), "llama.vocab_size": s.n_vocab,
        "llama.rope.dimension_count": s.head_dim,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.add_bos_token": False,
    }


def plan(shape: str | ArchShape = "llama-7b", weight_type: str = "Q4_0", alignment: int = 32,
         name: str | None = None) -> Layout:
    """The layout of a synthetic file, without writing it: metadata, the encoded header,
    every tensor's name, type, shape, absolute offset and size, and the file size."""
    s = _shape(shape)
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, not {weight_type!r}")
    meta = _metadata(s, weight_type, alignment, name)
    specs = _tensor_specs(s, weight_type)
    head = [b"GGUF", struct.pack("<IQQ", 3, len(specs), len(meta))]
    for k, v in meta.items():
        t, enc = _value(v)
        head += [_string(k), struct.pack("<I", t), enc]
    rel, sizes = 0, []
    for tname, tt, dims, _ in specs:
        q = qtype(tt)
        nbytes = int(np.prod(dims)) // q.block_size * q.type_size
        q.row_bytes(dims[0])  # raises unless rows are whole blocks
        head += [_string(tname), struct.pack("<I", len(dims)), struct.pack(f"<{len(dims)}Q", *dims),
                 struct.pack("<IQ", q.id, rel)]
        sizes.append((rel, nbytes))
        rel += nbytes + (-nbytes % alignment)
    header = b"".join(head)
    header += b"\0" * (-len(header) % alignment)
    entries = [TensorEntry(tname, tt, tuple(dims), len(header) + off, nb, role)
               for (tname, tt, dims, role), (off, nb) in zip(specs, sizes)]
    return Layout(s, weight_type, meta, entries, len(header), len(header) + rel, alignment, header)


def _tensor_std(t: TensorEntry) -> float:
    return 1.0 / np.sqrt(t.dims[0])  # 1/sqrt(cols): x @ w.T keeps the activations' scale


def write(path: str | os.PathLike, shape: str | ArchShape = "llama-7b", weight_type: str = "Q4_0", seed: int = 0,
          chunk_bytes: int = 1 << 24, alignment: int = 32, name: str | None = None,
          progress: Callable[[int, int], None] | None = None) -> Layout:
    """Write a synthetic GGUF file in a streaming way (memory bounded by ~`chunk_bytes` times
    a small factor) and return its layout. The file appears at `path` only when complete.
    `progress(bytes_written, file_bytes)` is called after every chunk."""
    layout = plan(shape, weight_type, alignment, name)
    done = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(layout.header)
        done = len(layout.header)
        for i, t in enumerate(layout.tensors):
            if f.tell() != t.offset:
                raise AssertionError(f"{t.name}: writer at byte {f.tell()}, layout says {t.offset}")
            rng = np.random.default_rng([seed, i])
            q = qtype(t.type)
            n_weights = t.nbytes // q.type_size * q.block_size
            per_chunk = max(q.block_size, chunk_bytes // q.type_size * q.block_size)
            for start in range(0, n_weights, per_chunk):
                n = min(per_chunk, n_weights - start)
                if t.role == "norm":
                    raw = (1.0 + 0.02 * rng.standard_normal(n)).astype(np.float32).view(np.uint8)
                else:
                    raw = _random_blocks(rng, t.type, n, _tensor_std(t))
                f.write(raw.data)
                done += raw.nbytes
                if progress:
                    progress(done, layout.file_bytes)
            pad = -t.nbytes % alignment
            f.write(b"\0" * pad)
            done += pad
        if f.tell() != layout.file_bytes:
            raise AssertionError(f"wrote {f.tell()} bytes, layout says {layout.file_bytes}")
        f.flush()
    return layout


def expected_one_token_touch(layout: Layout) -> dict[str, int]:
    """The logical bytes one decode step reads from each tensor: one row of token_embd (all of
    it when the output is tied to it), every other tensor in full (matmul weights, norms and
    the output projection are read whole for every token)."""
    out = {}
    for t in layout.tensors:
        out[t.name] = t.row_bytes if (t.role == "embed" and not layout.shape.tied) else t.nbytes
    return out


# ---- measurements ------------------------------------------------------------------------------


def _rusage() -> tuple[int, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_majflt


def read_whole_file(path: str | os.PathLike, cold: bool = True, chunk_bytes: int = 64 << 20) -> dict:
    """Read the whole file sequentially with pread into one reusable buffer (bounded memory):
    seconds, GB/s, faults. cold=True evicts the file from the page cache first."""
    from ..instrument.residency import evict

    path = os.fspath(path)
    still = evict(path) if cold else None
    size = os.path.getsize(path)
    buf = np.empty(min(chunk_bytes, size), np.uint8)
    mv = memoryview(buf)
    f0 = _rusage()
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while off < size:
            k = os.preadv(fd, [mv[: min(len(buf), size - off)]], off)
            if k <= 0:
                raise OSError(f"short read at byte {off}")
            off += k
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    f1 = _rusage()
    return {"what": "read whole file", "cold": cold, "bytes": size, "seconds": dt, "GB_per_s": size / dt / 1e9,
            "minflt": f1[0] - f0[0], "majflt": f1[1] - f0[1], "cached_after_evict": still}


def touch_map_from_events(events: list[dict]) -> dict[str, list[int] | None]:
    """The logical touch map of recorded events (dicts, e.g. `[e.to_dict() for e in rec.events]`):
    tensor -> sorted row ids read, or None when every row was read."""
    from ..instrument.analysis import rows_read

    return {k: (None if v is None else sorted(v)) for k, v in rows_read(events).items()}


def touch_pages(path: str | os.PathLike, touch_map: dict[str, list[int] | None], cold: bool = True,
                madvise: str | None = None) -> dict:
    """I/O only, no compute: map the file and read one byte of every page that the touch map's
    rows fall in (the pages one token needs), then report seconds, page faults, and the pages
    mapped in this process and cached afterwards. Compare with `read_whole_file`."""
    from ..gguf import open_gguf
    from ..instrument import residency as res_mod

    path = os.fspath(path)
    still = res_mod.evict(path) if cold else None
    g = open_gguf(path, advice=res_mod.ADVICE[madvise] if madvise else None)
    try:
        r = res_mod.Residency(g)
        want = np.zeros(r.n_pages, bool)
        for name, rows in touch_map.items():
            t = g.tensors[name]
            want |= res_mod.rows_to_pages(t.offset, t.row_bytes, None if rows is None else np.asarray(rows),
                                          t.rows, r.n_pages)
        before = r.mapped()
        view = np.frombuffer(g.mapping, dtype=np.uint8)
        idx = np.flatnonzero(want) * res_mod.PAGE
        f0 = _rusage()
        t0 = time.perf_counter()
        total = int(view[idx].sum(dtype=np.uint64))  # one byte per wanted page, in file order
        dt = time.perf_counter() - t0
        f1 = _rusage()
        mapped, cached = r.mapped(), r.cached()
        del view
        return {"what": "touch the pages of one token", "cold": cold, "madvise": madvise, "cached_after_evict": still,
                "pages": int(want.sum()), "page_bytes": int(want.sum()) * res_mod.PAGE, "seconds": dt,
                "GB_per_s": int(want.sum()) * res_mod.PAGE / dt / 1e9, "minflt": f1[0] - f0[0],
                "majflt": f1[1] - f0[1], "newly_mapped_bytes": int((mapped & ~before).sum()) * res_mod.PAGE,
                "cached_bytes": int(cached.sum()) * res_mod.PAGE, "checksum": total}
    finally:
        g.close()


def measure_tokens(path: str | os.PathLike, n_tokens: int = 2, cold: bool = True, token: int = 300,
                   madvise: str | None = None) -> dict:
    """Load the file (weights stay mapped, dequantized band by band per op: no f32 copy of the
    model) and decode `n_tokens` single tokens with the recorder on (faults, touch, residency).

    Per token: wall seconds, page faults of the process (minor, major), the logical touch
    (bytes of the rows the ops read, and of the whole pages holding them), the pages mapped in
    this process and in the page cache after the token, anonymous and file RSS. cold=True
    evicts the file from the page cache before loading; madvise e.g. "random" (no readahead,
    no fault-around)."""
    from .. import record
    from ..instrument import analysis
    from ..instrument import residency as res_mod
    from ..model import load
    from ..profile import tensor_table

    path = os.fspath(path)
    still = res_mod.evict(path) if cold else None
    f0 = _rusage()
    t0 = time.perf_counter()
    m = load(path, weight_cache="none", advice=res_mod.ADVICE[madvise] if madvise else None)
    load_s = time.perf_counter() - t0
    f1 = _rusage()
    out = {"path": path, "file_bytes": os.path.getsize(path), "cold": cold, "madvise": madvise,
           "cached_after_evict": still, "load_seconds": load_s, "load_minflt": f1[0] - f0[0],
           "load_majflt": f1[1] - f0[1], "tokens": []}
    try:
        tensors = tensor_table(m)
        state = m.new_state(n_tokens + 1)
        with record(m, faults=True, touch=True, residency=True) as rec:
            for i in range(n_tokens):
                a = _rusage()
                t = time.perf_counter()
                logits = m.forward(state, [token], phase="decode")
                dt = time.perf_counter() - t
                b = _rusage()
                out["tokens"].append({"pos": i, "seconds": dt, "minflt": b[0] - a[0], "majflt": b[1] - a[1],
                                      "finite_logits": bool(np.isfinite(logits).all()),
                                      **{f"rss_{k}": v for k, v in rss().items()}})
                token = int(np.argmax(logits[-1]))
        events = [e.to_dict() for e in rec.events]
        samples = rec.samples  # one before each token, one at the end
        for i, tok in enumerate(out["tokens"]):
            ev = [e for e in events if e["pos"] == i]
            tl = analysis.touch_layers(ev, tensors, [samples[i], samples[i + 1]], res_mod.PAGE)["total"]
            tok.update({"logical_bytes": tl["logical_bytes"], "logical_page_bytes": tl["logical_page_bytes"],
                        "mapped_bytes": tl["mapped_bytes"], "newly_mapped_bytes": tl["newly_mapped_bytes"],
                        "cached_bytes": tl["cached_bytes"], "tensor_bytes": tl["nbytes"],
                        "op_seconds": sum(e["wall_ns"] for e in ev) / 1e9,
                        "matmul_seconds": sum(e["wall_ns"] for e in ev if e["op"] == "matmul") / 1e9})
            tok["per_tensor_logical"] = {r["tensor"]: r["touched_bytes"]
                                         for r in analysis.logical_touch(ev, tensors)}
            tok["touch_map"] = touch_map_from_events(ev)
        out["recorder_overhead_s"] = rec.overhead_ns / 1e9
    finally:
        m.close()
    return out
