"""What the OS did with the mapped file: the mapped and cached layers of the touch map.

- mapped: pages of this process's mapping that are present in its page table
  (`/proc/self/pagemap`, bit 63). Fault-around maps neighbours of every faulted page,
  so this overstates what was touched.
- cached: pages of the file that are in the page cache (`mincore`), readahead included.
- fault counters come from `getrusage`; one fault can map many pages.

Also the knobs for an exact OS-level map: `evict` (posix_fadvise DONTNEED: a cold start)
and `advise` (madvise, e.g. MADV_RANDOM to switch readahead and fault-around off).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_libc.mincore.restype = ctypes.c_int

ADVICE = {"normal": mmap.MADV_NORMAL, "random": mmap.MADV_RANDOM, "sequential": mmap.MADV_SEQUENTIAL,
          "willneed": mmap.MADV_WILLNEED}


def mapping_span(mm: mmap.mmap) -> tuple[int, int]:
    """(address, length) of a Python mmap, without copying it."""
    view = np.frombuffer(mm, dtype=np.uint8)
    return view.ctypes.data, len(view)


def present_pages(addr: int, length: int) -> np.ndarray:
    """bool per page of [addr, addr+length): present in this process's page table."""
    first = addr // PAGE
    n = -(-(addr + length) // PAGE) - first
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        raw = f.read(n * 8)
    entries = np.frombuffer(raw, dtype="<u8")
    return (entries >> np.uint64(63)).astype(bool)


def cached_pages(addr: int, length: int) -> np.ndarray:
    """bool per page: in the page cache (mincore on our mapping of the file)."""
    n = -(-length // PAGE)
    vec = (ctypes.c_ubyte * n)()
    if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mincore failed: {os.strerror(err)}")
    return (np.frombuffer(vec, dtype=np.uint8) & 1).astype(bool)


def warm(path: str | os.PathLike, chunk: int = 1 << 24) -> None:
    """Read the whole file once, so that its pages are in the page cache (a warm start)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk)
        while f.readinto(buf):
            pass


def evict(path: str | os.PathLike) -> int:
    """Drop the file's pages from the page cache (a cold start; no root needed). Returns the
    bytes still cached afterwards: pages that some process has mapped and present stay."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages (a file just written) cannot be dropped before writeback
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if os.fstat(fd).st_size == 0:
            return 0
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        return int(cached_pages(*mapping_span(mm)).sum()) * PAGE
    finally:
        mm.close()


def advise(mm: mmap.mmap, advice: str) -> None:
    if advice not in ADVICE:
        raise ValueError(f"advice must be one of {sorted(ADVICE)}, not {advice!r}")
    mm.madvise(ADVICE[advice])


def pages_of(offset: int, nbytes: int) -> slice:
    """The file pages that bytes [offset, offset+nbytes) fall in."""
    return slice(offset // PAGE, -(-(offset + nbytes) // PAGE))


def rows_to_pages(offset: int, row_bytes: int, rows: np.ndarray | None, n_rows: int, n_pages: int) -> np.ndarray:
    """bool per file page: pages holding any byte of the given rows (None = all rows)."""
    out = np.zeros(n_pages, bool)
    if rows is None:
        out[pages_of(offset, n_rows * row_bytes)] = True
        return out
    rows = np.asarray(rows, np.int64)
    start = offset + rows * row_bytes
    first, last = start // PAGE, (start + row_bytes - 1) // PAGE
    for k in range(int((last - first).max(initial=0)) + 1):  # a row spans at most a few pages
        p = np.minimum(first + k, last)
        out[p] = True
    return out


class Residency:
    """Snapshots of the mapped and cached layers for one open GGUF file."""

    def __init__(self, gguf):
        self.gguf = gguf
        self.addr, self.length = mapping_span(gguf.mapping)
        self.n_pages = -(-self.length // PAGE)

    def mapped(self) -> np.ndarray:
        return present_pages(self.addr, self.length)

    def cached(self) -> np.ndarray:
        return cached_pages(self.addr, self.length)

    def per_tensor(self, pages: np.ndarray) -> dict[str, int]:
        """Bytes of each tensor's pages that are set in a page mask."""
        out = {}
        for t in self.gguf.tensors.values():
            sl = pages_of(t.offset, t.nbytes)
            out[t.name] = int(pages[sl].sum()) * PAGE
        return out


def fault_around_probe(path: str | os.PathLike, stride_pages: int = 64, max_touches: int = 256) -> dict:
    """Measure pages mapped per fault on this kernel for this file: map it afresh, read one
    byte every `stride_pages` pages, count this thread's faults and the pages that became
    present. (Fault-around and large folios make one fault map many pages.)"""
    import resource

    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        addr, length = mapping_span(mm)
        view = np.frombuffer(mm, dtype=np.uint8)
        idx = np.arange(0, length, stride_pages * PAGE)[:max_touches]
        before = int(present_pages(addr, length).sum())
        r0 = resource.getrusage(who)
        total = 0
        for i in idx.tolist():
            total += int(view[i])
        r1 = resource.getrusage(who)
        after = int(present_pages(addr, length).sum())
        del view
    finally:
        mm.close()
    faults = (r1.ru_minflt - r0.ru_minflt) + (r1.ru_majflt - r0.ru_majflt)
    return {"touches": len(idx), "minor_faults": r1.ru_minflt - r0.ru_minflt,
            "major_faults": r1.ru_majflt - r0.ru_majflt, "pages_mapped": after - before,
            "pages_per_fault": (after - before) / faults if faults else float("nan"),
            "pages_per_touch": (after - before) / len(idx) if len(idx) else float("nan"), "stride_pages": stride_pages}
