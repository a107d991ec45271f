"""The numpy backend's float32 weight cache, kept on disk and mapped, not rebuilt per load.

Dequantizing a model to float32 takes most of a numpy load (SmolLM2: 135 M weights, ~0.8 s
here); the result depends only on the GGUF file and the cache's layout. So the first load
writes it to one file under `$WORKBENCH_CACHE/f32/` (atomically: a temporary, fsync'd, then
renamed), and later loads map that file read-only: the weights are then views of the page
cache like the GGUF's own, shared between processes, and a warm load costs a mapping.

A store file is found by the source file's identity (real path, size, modification time,
inode) and the layout (each array's name, shape and memory order), hashed into its name and
checked against its header. Writing a new one removes the stale stores of the same source
and those whose source is gone, and keeps the directory under `WORKBENCH_F32_STORE_MAX`
bytes (default 8 GB), least recently used first. `WORKBENCH_F32_STORE=0` turns the store
off (the cache is then built in memory on every load, as before).

File: MAGIC, a little-endian u64 header length, the header (JSON), then each array's bytes
at a 4096-aligned offset, in the memory order the header names.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from .atomic import atomic_path

MAGIC = b"WBF32\x00\x00\x01"
ALIGN = 4096
SUFFIX = ".f32"
DEFAULT_MAX_BYTES = 8 << 30


def for_model(path: str | os.PathLike) -> "F32Store | None":
    """The store for the model file at `path`, or None if the store is turned off."""
    d = store_dir()
    return None if d is None else F32Store(d, path)


def store_dir() -> Path | None:
    """Where stores are kept, or None if the store is turned off."""
    env = os.environ.get("WORKBENCH_F32_STORE", "")
    if env.strip().lower() in ("0", "off", "no", "false"):
        return None
    if env and env not in ("1", "on"):
        return Path(env)
    from .models import cache_dir

    return cache_dir() / "f32"


def _scan(directory: Path | None) -> list[dict]:
    """Every file with the store suffix in `directory`: path, bytes, last use (mtime), whether
    its header reads as a store's, the source model it names and whether that still exists."""
    out = []
    for p in (directory.glob("*" + SUFFIX) if directory is not None and directory.is_dir() else ()):
        try:
            st, h = p.stat(), _read_header(p)
        except OSError:
            continue
        src = _source_of(h)
        out.append({"path": str(p), "bytes": st.st_size, "source": src,
                    "source_exists": bool(src and os.path.exists(src)), "last_used": st.st_mtime,
                    "is_store": h is not None})
    return out


def stores() -> list[dict]:
    """Every store file: path, bytes, its source model and whether that still exists, when
    it was last used (seconds since the epoch); newest use first."""
    rows = [{k: v for k, v in r.items() if k != "is_store"} for r in _scan(store_dir())]
    return sorted(rows, key=lambda r: -r["last_used"])


def files_for(path: str | os.PathLike) -> list[Path]:
    """The store files made from the model file at `path` (what a cold start evicts too)."""
    source = os.path.realpath(path)
    return [Path(r["path"]) for r in _scan(store_dir()) if r["source"] == source]


class F32Store:
    def __init__(self, directory: str | os.PathLike, source: str | os.PathLike):
        self.dir = Path(directory)
        self.source = os.path.realpath(source)
        st = os.stat(self.source)
        self.identity = {"path": self.source, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
        self.path: Path | None = None  # the file the arrays came from, once loaded or saved
        self.built = False  # True if this load wrote it
        self._map = None

    def _file(self, layout) -> tuple[Path, str]:
        key = hashlib.sha256(json.dumps([self.identity, layout], sort_keys=True).encode()).hexdigest()
        src = hashlib.sha256(self.source.encode()).hexdigest()[:12]
        return self.dir / f"{Path(self.source).stem}.{src}.{key[:24]}{SUFFIX}", key

    def load(self, layout: list[tuple[str, tuple[int, int], str]]) -> dict[str, np.ndarray] | None:
        """The stored arrays for `layout` [(name, (rows, cols), "C" | "F")], read-only views
        of the mapped file; None if there is no valid store for it."""
        path, key = self._file(layout)
        try:
            with open(path, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            return None
        header = _header(m)
        expected = _placed(key, self.identity, layout)
        if header != expected or expected["size"] != len(m):  # anything else: rebuilt
            m.close()
            return None
        arrays = _views(m, header["arrays"])
        try:
            os.utime(path)  # recently used
        except OSError:  # a read-only store: still usable
            pass
        self.path, self._map = path, m
        return arrays

    def save(self, layout, fill) -> dict[str, np.ndarray]:
        """Create the store for `layout`: `fill(arrays)` writes every array (writable views of
        the new file); then the file is made durable and renamed into place, and the arrays
        returned are read-only views of it. Raises OSError if it cannot be written."""
        path, key = self._file(layout)
        self.dir.mkdir(parents=True, exist_ok=True)
        header = _placed(key, self.identity, layout)
        arrays, size = header["arrays"], header["size"]
        blob = json.dumps(header).encode()
        self._evict(keep_free=size)
        with atomic_path(path) as tmp:
            with open(tmp, "r+b") as f:
                # the blocks are reserved now: a full disk is an OSError here, not a SIGBUS
                # when a write through the mapping finds no space (systems without
                # posix_fallocate get a sparse file)
                reserve = getattr(os, "posix_fallocate", None)
                if reserve is not None:
                    reserve(f.fileno(), 0, size)
                else:
                    f.truncate(size)
                f.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
                f.flush()
                m = mmap.mmap(f.fileno(), size)
            try:
                fill(_views(m, arrays, writable=True))
                m.flush()
            finally:
                try:
                    m.close()
                except BufferError:  # fill kept a view: the mapping goes when it does
                    pass
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        self.path, self._map, self.built = path, m, True
        return _views(m, arrays)

    def info(self) -> dict:
        """Where this load's float32 cache came from, for reports."""
        return {"path": str(self.path) if self.path else None, "built_now": self.built,
                "bytes": self.path.stat().st_size if self.path and self.path.exists() else 0}

    def _evict(self, keep_free: int) -> None:
        """Remove stale stores (same source, or source gone), then the least recently used
        until the directory plus `keep_free` bytes fits the size limit."""
        limit = int(os.environ.get("WORKBENCH_F32_STORE_MAX", DEFAULT_MAX_BYTES))
        entries = []
        for r in _scan(self.dir):
            if not r["is_store"] or r["source"] == self.source or (r["source"] and not r["source_exists"]):
                _unlink(Path(r["path"]))
            else:
                entries.append((r["last_used"], r["bytes"], Path(r["path"])))
        total = sum(s for _, s, _ in entries) + keep_free
        for _, s, p in sorted(entries):
            if total <= limit:
                break
            _unlink(p)
            total -= s

    def close(self) -> None:
        """Drop this store's mapping (arrays still referring to it keep it alive)."""
        self._map = None


def _placed(key: str, identity: dict, layout) -> dict:
    """The header of the store for `layout`: each array at the next 4096-aligned offset after
    the header (whose own length moves them: settled by iterating)."""
    arrays, off = [], 0
    for name, (rows, cols), order in layout:
        off = -(-off // ALIGN) * ALIGN
        arrays.append({"name": name, "shape": [int(rows), int(cols)], "order": order, "offset": off})
        off += rows * cols * 4
    data_start = ALIGN
    while True:
        placed = [dict(a, offset=a["offset"] + data_start) for a in arrays]
        header = {"key": key, "source": identity, "arrays": placed, "size": data_start + off}
        need = -(-(len(MAGIC) + 8 + len(json.dumps(header).encode())) // ALIGN) * ALIGN
        if need <= data_start:
            return header
        data_start = need


def _header(buf) -> dict | None:
    """The header of a store file (or its first bytes), or None if it is not one."""
    n = len(MAGIC) + 8
    if len(buf) < n or bytes(buf[: len(MAGIC)]) != MAGIC:
        return None
    (length,) = struct.unpack("<Q", bytes(buf[len(MAGIC) : n]))
    if length > len(buf) - n:
        return None
    try:
        h = json.loads(bytes(buf[n : n + length]))
    except (ValueError, RecursionError):
        return None
    return h if isinstance(h, dict) else None


def _source_of(header: dict | None) -> str | None:
    """The source model path a store's header names (None if it names none)."""
    src = (header or {}).get("source")
    path = src.get("path") if isinstance(src, dict) else None
    return path if isinstance(path, str) else None


def _read_header(path: Path) -> dict | None:
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
            return None
        (length,) = struct.unpack("<Q", head[len(MAGIC) :])
        if length > (1 << 26):
            return None
        return _header(head + f.read(length))


def _views(m, arrays, writable: bool = False) -> dict[str, np.ndarray]:
    out = {}
    for a in arrays:
        rows, cols = a["shape"]
        if not (isinstance(a["offset"], int) and 0 <= a["offset"] and a["offset"] + rows * cols * 4 <= len(m)):
            raise ValueError(f"store array {a['name']!r} does not lie inside the file")
        flat = np.frombuffer(m, np.float32, count=rows * cols, offset=a["offset"])
        v = flat.reshape(cols, rows).T if a["order"] == "F" else flat.reshape(rows, cols)
        if not writable:
            v.flags.writeable = False
        out[a["name"]] = v
    return out


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass
