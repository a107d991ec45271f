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
import stat
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

    def value(self, vtype: int, field: str, depth: int = 0, type_at: int | None = None) -> Any:
        if vtype not in VALUE_TYPES:
            self.fail(field + " type", f"unknown value type {vtype} (known: 0..12)", type_at)
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
            self.fail(field + " element type", f"unknown array element type {etype} (known: 0..12)", start)
        if depth > 0 and etype == ARRAY:
            self.fail(field + " element type", "arrays nested more than two deep are not supported", start)
        remaining = self.end - self.pos
        if etype in _NUMPY_DTYPES:
            dt = _NUMPY_DTYPES[etype]
            if count * dt.itemsize > remaining:
                self.fail(field + " count", f"array of {count} x {dt.itemsize} bytes runs past the end of the file "
                          f"({remaining} bytes remain)", start + 4)
            arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
            self.pos += count * dt.itemsize
            return arr
        # a string takes at least 8 bytes (its length), a nested array at least 12 (type, count)
        least = 8 if etype == STRING else 12
        if count * least > remaining:
            self.fail(field + " count", f"array of {count} {VALUE_TYPES[etype][0]}s cannot fit in the {remaining} "
                      "bytes that remain", start + 4)
        if etype == STRING:
            return self.string_array(count, field)
        return [self.array(f"{field}[{i}]", depth + 1) for i in range(count)]

    def string_array(self, count: int, field: str) -> list[str]:
        """Bulk read of `count` strings (vocabularies have ~10^5 of them). Invalid UTF-8 is
        kept with replacement characters, as llama.cpp keeps such tokens as raw bytes.

        Fast path (`_scan_strings`): the length fields are found with numpy and the strings
        decoded in one piece; whatever it cannot vouch for is read one string at a time by
        `_read_strings`, which also raises every error, so results and errors are the same."""
        starts, stop = _scan_strings(self.buf, self.pos, count, self.end)
        out = _decode_strings(self.buf, self.pos, starts, stop) if len(starts) else []
        if out is None:  # some invalid UTF-8 (or a NUL inside a string): all one at a time
            out = []
        else:
            self.pos = stop
        if len(out) < count:
            out += self._read_strings(len(out), count, field)
        return out

    def _read_strings(self, first: int, count: int, field: str) -> list[str]:
        """Strings `first`..`count - 1` of an array, one at a time from `self.pos`."""
        buf, pos, end = self.buf, self.pos, self.end
        unpack = struct.Struct("<Q").unpack_from
        out = [None] * (count - first)
        for i in range(first, count):
            if pos + 8 > end:
                self.pos = pos
                self.fail(f"{field}[{i}] length", f"needs 8 bytes but only {end - pos} remain")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > end - pos:
                self.pos = pos - 8
                self.fail(f"{field}[{i}] length", f"string length {n} runs past the end of the file "
                          f"({end - pos} bytes remain)")
            out[i - first] = str(buf[pos : pos + n], "utf-8", "replace")
            pos += n
        self.pos = pos
        return out


_SCAN_WINDOW = 1 << 18  # bytes looked at per numpy pass
_SCAN_DETOURS = 64  # strings read one at a time before the fast path gives up


def _scan_strings(buf, pos: int, count: int, end: int) -> tuple[np.ndarray, int]:
    """The start of each of the first strings of an array at `pos`, found without a Python
    step per string: (starts, end of the last one). Stops early (the caller reads the rest one
    at a time, with its checks and errors) where it cannot vouch for a string.

    A length below 256 is its low byte and seven zero bytes. In a window of the buffer every
    offset followed by seven zero bytes is a candidate; the chain from the current string
    (next = start + 8 + length) is taken while each next start is the next candidate. The
    window never reaches past the array in a well-formed file (each remaining string takes
    at least 8 bytes) and never past the end of the buffer, so nothing else is read. Where
    the chain leaves the candidates (a string of 256 bytes or more, an empty string, a NUL
    in a string) one string is read the slow way and the scan goes on from there."""
    found: list[np.ndarray] = []
    p, i, detours = pos, 0, 0
    while i < count:
        w = min(8 * (count - i), end - p, _SCAN_WINDOW)
        if w < 8:
            break
        a = np.frombuffer(buf, np.uint8, count=w, offset=p)
        z = a == 0
        n = w - 7
        ok = z[1 : 1 + n] & z[2 : 2 + n]
        for k in range(3, 8):
            ok &= z[k : k + n]
        cand = np.flatnonzero(ok)
        if len(cand) and cand[0] == 0:
            nxt = cand + 8
            nxt += a[cand]
            gap = np.flatnonzero(nxt[:-1] != cand[1:])
            k = min(int(gap[0]) + 1 if len(gap) else len(cand), count - i)
            stop = p + int(nxt[k - 1])
            if stop > end:  # the last one runs past the end: left to the slow reader's error
                k -= 1
                stop = p + int(nxt[k - 1]) if k else p
            if k == 0:
                break
            found.append(cand[:k] + p)
            i += k
            if k < len(cand) and stop - p + 8 <= w:  # left the candidates inside the window
                detours += 1
            p = stop
        else:  # this string's length is not a candidate: read it alone
            detours += 1
            (ln,) = struct.unpack_from("<Q", buf, p)
            if ln > end - p - 8:
                break
            found.append(np.array([p], dtype=np.int64))
            i += 1
            p += 8 + ln
        if detours > _SCAN_DETOURS:
            break
    if not found:
        return np.zeros(0, dtype=np.int64), pos
    return (np.concatenate(found) if len(found) > 1 else found[0]), p


def _decode_strings(buf, pos: int, starts: np.ndarray, stop: int) -> list[str] | None:
    """The strings whose length fields start at `starts` (a back-to-back run from `pos` to
    `stop`), decoded in one call: each length field becomes one NUL and the whole is decoded
    and split there. None if that would differ from decoding each alone with "replace" (some
    invalid UTF-8, or a NUL inside a string)."""
    region = np.frombuffer(buf, np.uint8, count=stop - pos, offset=pos)
    rel = starts - pos
    keep = np.ones(len(region), dtype=bool)
    for k in range(7):  # drop the first seven bytes of each length field...
        keep[rel + k] = False
    joined = region[keep]  # (a copy)
    joined[rel - 7 * np.arange(len(rel))] = 0  # ...and make its eighth a NUL
    try:
        text = joined.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        return None
    out = text.split("\x00")
    if len(out) != len(starts) + 1:
        return None
    del out[0]
    return out


def _name(s: str, limit: int = 80) -> str:
    """A key or tensor name for an error message: quoted, escaped, and cut if long."""
    r = repr(s)
    return r if len(r) <= limit else r[: limit - 5] + "...'" + f" ({len(s)} chars)"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
    key_offsets: dict[str, int] = field(default_factory=dict, repr=False)  # metadata key -> its entry's byte
    info_offsets: dict[str, int] = field(default_factory=dict, repr=False)  # tensor name -> its info's byte
    _mm: mmap.mmap | None = field(default=None, repr=False)
    _fd: int | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

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
        """Refuse to go on if the mapped file was truncated or rewritten in place (touching a
        page past a new end of file would kill the process with SIGBUS). A no-op when the data
        is not mapped (parsed from memory). Only narrows the window: a file truncated after
        this check and before the pages are read can still raise SIGBUS."""
        if self._mm is None:
            if self._closed:
                raise ValueError(f"{self.path}: the file is closed")
            return
        try:
            st = os.fstat(self._fd) if self._fd is not None else os.stat(self.path)
        except OSError as e:
            raise GGUFError(self.path, "file", 0, f"cannot be checked any more ({e.strerror})") from None
        if st.st_size != self.file_size or st.st_mtime_ns != self.mtime_ns:
            how = f"size {self.file_size} -> {st.st_size}" if st.st_size != self.file_size else "rewritten"
            raise GGUFError(self.path, "file", 0, f"changed on disk since it was opened ({how}); reopen it")

    def close(self) -> None:
        # numpy views into the mapping keep it alive; drop ours and let GC unmap
        for t in self.tensors.values():
            t.data = None
        self._mm = None
        self._closed = True
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
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise GGUFError(path, "file", 0, "not a regular file")
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
    """Parse a GGUF image held in `buf` (mmap, bytes, or anything with the buffer protocol).

    Every error is a GGUFError whose offset is where the offending field starts."""
    c = _Cursor(buf, path)
    c.need(4, "magic")
    magic = bytes(buf[0:4])
    if magic != MAGIC:
        c.fail("magic", f"expected b'GGUF', found {magic!r}: not a GGUF file")
    c.pos = 4
    version = c.u32("version")
    if version not in VERSIONS:
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 and version >> 24 in VERSIONS else ""
        c.fail("version", f"unsupported GGUF version {version}{hint} (supported: {', '.join(map(str, VERSIONS))})", 4)
    n_tensors = c.u64("tensor count")
    n_kv = c.u64("metadata count")
    # each key/value needs >= 8 (key length) + 4 (type) + 1 bytes; each tensor info >= 8 + 4 + 8 + 4 + 8
    if n_kv * 13 > c.end - c.pos:
        c.fail("metadata count", f"{n_kv} entries cannot fit in a {c.end}-byte file", 16)
    if n_tensors * 32 > c.end - c.pos:
        c.fail("tensor count", f"{n_tensors} tensors cannot fit in a {c.end}-byte file", 8)

    metadata: dict[str, Any] = {}
    value_at: dict[str, int] = {}
    for i in range(n_kv):
        at = c.pos
        key = c.string(f"metadata[{i}] key")
        if key in metadata:
            c.fail(f"metadata {_name(key)}", f"duplicate key (first at byte {value_at[key]})", at)
        type_at = c.pos
        vtype = c.u32(f"metadata {_name(key)} type")
        value_at[key] = at
        metadata[key] = c.value(vtype, f"metadata {_name(key)}", type_at=type_at)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not _is_int(alignment) or alignment <= 0 or alignment & (alignment - 1):
        c.fail("metadata 'general.alignment'", f"must be a positive power of two (an integer), found {alignment!r}",
               value_at.get("general.alignment", 0))

    infos = []
    for i in range(n_tensors):
        at = c.pos
        name = c.string(f"tensor[{i}] name")
        label = f"tensor {_name(name)}"
        dims_at = c.pos
        n_dims = c.u32(f"{label} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            c.fail(f"{label} n_dims", f"{n_dims} dimensions (expected 1..{MAX_DIMS})", dims_at)
        dims = tuple(c.u64(f"{label} dims") for _ in range(n_dims))
        type_at = c.pos
        type_id = c.u32(f"{label} type")
        offset = c.u64(f"{label} offset")
        infos.append((at, name, dims_at, dims, type_id, type_at, offset))

    data_offset = -(-c.pos // alignment) * alignment
    tensors: dict[str, QTensor] = {}
    offset_at: dict[str, int] = {}
    first_at: dict[str, int] = {}
    for at, name, dims_at, dims, type_id, type_at, offset in infos:
        label = f"tensor {_name(name)}"
        if name in tensors:
            c.fail(label, f"duplicate tensor name (first at byte {first_at[name]})", at)
        if type_id not in QTYPES:
            c.fail(f"{label} type", f"unknown GGML type {type_id}", type_at)
        q = QTYPES[type_id]
        n = 1
        for d in dims:
            if d == 0 or d >= 1 << 62:
                c.fail(f"{label} dims", f"dimension {d} out of range in {dims}", dims_at + 4)
            n *= d
            if n >= 1 << 62:
                c.fail(f"{label} dims", f"{dims} has too many elements", dims_at + 4)
        if dims[0] % q.block_size:
            c.fail(f"{label} dims",
                   f"first dimension {dims[0]} is not a multiple of {q.name}'s block size {q.block_size}", dims_at + 4)
        if offset % alignment:
            c.fail(f"{label} offset", f"offset {offset} is not a multiple of the alignment {alignment}", type_at + 4)
        nbytes = n // q.block_size * q.type_size
        start = data_offset + offset
        if start + nbytes > c.end:
            c.fail(f"{label} offset",
                   f"data [{start}, {start + nbytes}) runs past the end of the {c.end}-byte file", type_at + 4)
        offset_at[name], first_at[name] = type_at + 4, at
        tensors[name] = QTensor.view_of(buf, name, q, dims, start, nbytes)

    _check_overlaps(c, tensors, offset_at)
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors, alignment=alignment,
                    data_offset=data_offset, file_size=c.end, mtime_ns=0, key_offsets=value_at, info_offsets=first_at)


def _check_overlaps(c: _Cursor, tensors: dict[str, QTensor], offset_at: dict[str, int]) -> None:
    # by start, then table order: of two tensors at the same place the later entry is blamed
    spans = sorted((t.offset, i, t.offset + t.nbytes, t.name) for i, t in enumerate(tensors.values()))
    for (s0, _, e0, n0), (s1, _, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            c.fail(f"tensor {_name(n1)} offset", f"data [{s1}, {e1}) overlaps tensor {_name(n0)} [{s0}, {e0})",
                   offset_at[n1])
