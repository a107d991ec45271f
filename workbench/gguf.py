"""GGUF reader on a memory map: header, metadata, tensor table; the data stays mapped.

Layout (versions 2 and 3, little-endian):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x       (key: string, value_type: u32, value)
    n_tensors x  (name: string, n_dims: u32, dims: u64[n_dims], type: u32, offset: u64)
    padding to `general.alignment` (default 32)
    tensor data; each tensor at data_start + offset

A string is (length u64, utf-8 bytes); an array is (elem_type u32, count u64, elems).

Every size read from the file is checked against the bytes that remain before
anything is allocated, so a hostile file ends in one `GGUFError` naming the field and
the byte offset, never in a huge allocation or a crash.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernels.qtypes import QTYPES

from .tensor import QTensor

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

# value type id -> (name, struct code or None for string/array)
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "<B"),
    1: ("int8", "<b"),
    2: ("uint16", "<H"),
    3: ("int16", "<h"),
    4: ("uint32", "<I"),
    5: ("int32", "<i"),
    6: ("float32", "<f"),
    7: ("bool", "<?"),
    8: ("string", None),
    9: ("array", None),
    10: ("uint64", "<Q"),
    11: ("int64", "<q"),
    12: ("float64", "<d"),
}
STRING, ARRAY = 8, 9
_NUMPY_DTYPES = {k: np.dtype(code) for k, (_, code) in VALUE_TYPES.items() if code}


class GGUFError(ValueError):
    """A GGUF file that cannot be read; says which file, field and byte offset."""

    def __init__(self, path: str, field: str, offset: int, problem: str):
        self.path, self.field, self.offset, self.problem = path, field, offset, problem
        super().__init__(f"{path}: {field} at byte {offset}: {problem}")


class _Cursor:
    """Reads little-endian values from a buffer, checking every length first."""

    def __init__(self, buf, path: str):
        self.buf = buf
        self.end = len(buf)
        self.path = path
        self.pos = 0

    def fail(self, field: str, problem: str, at: int | None = None):
        raise GGUFError(self.path, field, self.pos if at is None else at, problem)

    def need(self, n: int, field: str):
        if n < 0 or self.pos + n > self.end:
            self.fail(field, f"needs {n} bytes but only {self.end - self.pos} remain (file is {self.end} bytes)")

    def scalar(self, code: str, field: str):
        size = struct.calcsize(code)
        self.need(size, field)
        (v,) = struct.unpack_from(code, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, field: str) -> int:
        return self.scalar("<I", field)

    def u64(self, field: str) -> int:
        return self.scalar("<Q", field)

    def raw_string(self, field: str) -> bytes:
        start = self.pos
        n = self.u64(field + " length")
        if n > self.end - self.pos:
            self.fail(field, f"string length {n} runs past the end of the file ({self.end - self.pos} bytes remain)", start)
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return s

    def string(self, field: str) -> str:
        start = self.pos
        b = self.raw_string(field)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(field, f"string is not valid UTF-8 ({e.reason} at byte {e.start} of it)", start)

    def value(self, vtype: int, field: str, depth: int = 0) -> Any:
        if vtype not in VALUE_TYPES:
            self.fail(field, f"unknown value type {vtype} (known: 0..12)")
        if vtype == STRING:
            return self.string(field)
        if vtype == ARRAY:
            return self.array(field, depth)
        return self.scalar(VALUE_TYPES[vtype][1], field)

    def array(self, field: str, depth: int) -> Any:
        start = self.pos
        etype = self.u32(field + " element type")
        count = self.u64(field + " count")
        if etype not in VALUE_TYPES:
            self.fail(field, f"unknown array element type {etype} (known: 0..12)", start)
        if depth > 0 and etype == ARRAY:
            self.fail(field, "arrays nested more than two deep are not supported", start)
        remaining = self.end - self.pos
        if etype in _NUMPY_DTYPES:
            dt = _NUMPY_DTYPES[etype]
            if count * dt.itemsize > remaining:
                self.fail(field, f"array of {count} x {dt.itemsize} bytes runs past the end of the file", start)
            arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
            self.pos += count * dt.itemsize
            return arr
        # strings and nested arrays: each element takes at least 8 bytes (its length)
        if count * 8 > remaining:
            self.fail(field, f"array of {count} strings or arrays cannot fit in the {remaining} bytes that remain", start)
        if etype == STRING:
            return self.string_array(count, field)
        return [self.array(f"{field}[{i}]", depth + 1) for i in range(count)]

    def string_array(self, count: int, field: str) -> list[str]:
        """Bulk read of `count` strings (vocabularies have ~10^5 of them)."""
        buf, pos, end = self.buf, self.pos, self.end
        unpack = struct.Struct("<Q").unpack_from
        out = [None] * count
        for i in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.fail(f"{field}[{i}] length", "runs past the end of the file")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > end - pos:
                self.pos = pos - 8
                self.fail(f"{field}[{i}]", f"string length {n} runs past the end of the file")
            out[i] = buf[pos : pos + n]
            pos += n
        self.pos = pos
        try:
            return [bytes(b).decode("utf-8") for b in out]
        except UnicodeDecodeError:
            # llama.cpp keeps such tokens as raw bytes; so do we, with replacement
            return [bytes(b).decode("utf-8", errors="replace") for b in out]


@dataclass
class GGUFFile:
    """An open GGUF file: metadata, tensor table, and the mapping they view."""

    path: str
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, QTensor]
    alignment: int
    data_offset: int
    file_size: int
    mtime_ns: int
    _mm: mmap.mmap | None = field(default=None, repr=False)
    _fd: int | None = field(default=None, repr=False)

    @property
    def mapping(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError(f"{self.path}: the file is closed")
        return self._mm

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def check_unchanged(self) -> None:
        """Refuse to go on if the file was truncated or rewritten under the mapping
        (touching a page past a new end of file would kill the process with SIGBUS)."""
        st = os.stat(self.path)
        if st.st_size != self.file_size or st.st_mtime_ns != self.mtime_ns:
            raise GGUFError(self.path, "file", 0,
                            f"changed on disk since it was opened (size {self.file_size} -> {st.st_size}); reopen it")

    def close(self) -> None:
        # numpy views into the mapping keep it alive; drop ours and let GC unmap
        for t in self.tensors.values():
            t.data = None
        self._mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_gguf(path: str | os.PathLike, advice: int | None = None) -> GGUFFile:
    """Map a GGUF file and read its header, metadata and tensor table.
    `advice` (an mmap.MADV_* value) is applied to the mapping before anything is read."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if st.st_size == 0:
            raise GGUFError(path, "magic", 0, "the file is empty")
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        if advice is not None:
            mm.madvise(advice)
        g = parse(mm, path)
    except BaseException:
        os.close(fd)
        raise
    g._mm, g._fd = mm, fd
    g.file_size, g.mtime_ns = st.st_size, st.st_mtime_ns
    return g


def parse(buf, path: str = "<buffer>") -> GGUFFile:
    """Parse a GGUF image held in `buf` (mmap, bytes, or anything with the buffer protocol)."""
    c = _Cursor(buf, path)
    c.need(4, "magic")
    magic = bytes(buf[0:4])
    if magic != MAGIC:
        c.fail("magic", f"expected b'GGUF', found {magic!r}: not a GGUF file")
    c.pos = 4
    version = c.u32("version")
    if version not in VERSIONS:
        c.fail("version", f"unsupported GGUF version {version} (supported: {', '.join(map(str, VERSIONS))})", 4)
    n_tensors = c.u64("tensor count")
    n_kv = c.u64("metadata count")
    # each key/value needs >= 8 (key length) + 4 (type) bytes; each tensor info >= 8 + 4 + 4 + 8
    if n_kv * 12 > c.end - c.pos:
        c.fail("metadata count", f"{n_kv} entries cannot fit in a {c.end}-byte file", 16)
    if n_tensors * 24 > c.end - c.pos:
        c.fail("tensor count", f"{n_tensors} tensors cannot fit in a {c.end}-byte file", 8)

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        at = c.pos
        key = c.string(f"metadata[{i}] key")
        vtype = c.u32(f"metadata {key!r} type")
        if key in metadata:
            c.fail(f"metadata {key!r}", "duplicate key", at)
        metadata[key] = c.value(vtype, f"metadata {key!r}")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        c.fail("metadata 'general.alignment'", f"must be a positive power of two, found {alignment!r}", 0)

    infos = []
    for i in range(n_tensors):
        at = c.pos
        name = c.string(f"tensor[{i}] name")
        n_dims = c.u32(f"tensor {name!r} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            c.fail(f"tensor {name!r} n_dims", f"{n_dims} dimensions (expected 1..{MAX_DIMS})")
        dims = tuple(c.u64(f"tensor {name!r} dims") for _ in range(n_dims))
        type_at = c.pos
        type_id = c.u32(f"tensor {name!r} type")
        offset = c.u64(f"tensor {name!r} offset")
        infos.append((at, name, dims, type_id, type_at, offset))

    data_offset = -(-c.pos // alignment) * alignment
    tensors: dict[str, QTensor] = {}
    for at, name, dims, type_id, type_at, offset in infos:
        if name in tensors:
            c.fail(f"tensor {name!r}", "duplicate tensor name", at)
        if type_id not in QTYPES:
            c.fail(f"tensor {name!r} type", f"unknown GGML type {type_id}", type_at)
        q = QTYPES[type_id]
        n = 1
        for d in dims:
            if d == 0 or d >= 1 << 62:
                c.fail(f"tensor {name!r} dims", f"dimension {d} out of range in {dims}", at)
            n *= d
            if n >= 1 << 62:
                c.fail(f"tensor {name!r} dims", f"{dims} has too many elements", at)
        if dims[0] % q.block_size:
            c.fail(f"tensor {name!r} dims",
                   f"first dimension {dims[0]} is not a multiple of {q.name}'s block size {q.block_size}", at)
        if offset % alignment:
            c.fail(f"tensor {name!r} offset", f"offset {offset} is not a multiple of the alignment {alignment}", type_at + 4)
        nbytes = n // q.block_size * q.type_size
        start = data_offset + offset
        if start + nbytes > c.end:
            c.fail(f"tensor {name!r} offset",
                   f"data [{start}, {start + nbytes}) runs past the end of the {c.end}-byte file", type_at + 4)
        tensors[name] = QTensor.view_of(buf, name, q, dims, start, nbytes)

    _check_overlaps(c, tensors)
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors, alignment=alignment,
                    data_offset=data_offset, file_size=c.end, mtime_ns=0)


def _check_overlaps(c: _Cursor, tensors: dict[str, QTensor]) -> None:
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values())
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            c.fail(f"tensor {n1!r} offset", f"data [{s1}, {e1}) overlaps tensor {n0!r} [{s0}, {e0})", 0)
