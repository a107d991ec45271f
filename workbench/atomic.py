"""Atomic writes: write beside the target, fsync, rename, fsync the directory. A reader (or a
crash, or a kill) sees the old file or the new one, never half of one.

While an atomic write is in progress in the main thread, SIGTERM (when it has its default
action) becomes `SystemExit(143)`: the temporary file is removed, every enclosing `finally`
runs, and the process then exits with status 143. SIGKILL cannot be caught: it may leave a
hidden `.<name>.<random>.tmp` beside the target. Such a stray file is never read and never
collides with a later write (each write takes a fresh random name); it only takes space.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator


class _TermGuard:
    """SIGTERM handler for the duration of the outermost atomic write. It raises SystemExit
    only while `armed` (inside the write's body, where a cleanup is sure to run); at any
    other moment it remembers the signal and `_sigterm_as_exit` raises it once done."""

    def __init__(self):
        self.armed = False
        self.pending = False

    def __call__(self, signum, frame):
        if self.armed:
            self.armed = False  # at most once
            raise SystemExit(128 + signum)
        self.pending = True


_guard: _TermGuard | None = None


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[_TermGuard | None]:
    global _guard
    if (_guard is not None or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield None  # nested, not the main thread, or the program handles SIGTERM itself
        return
    guard = _guard = _TermGuard()
    signal.signal(signal.SIGTERM, guard)
    try:
        yield guard
    finally:
        guard.armed = False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _guard = None
    if guard.pending:  # SIGTERM outside the armed window: honour it now that the write is done
        raise SystemExit(128 + signal.SIGTERM)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would race with other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success it replaces the target.
    On any exception (SIGTERM included, see the module doc) the target is left as it was and
    the temporary file is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _sigterm_as_exit() as guard:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        tmp = Path(name)
        try:
            try:
                if guard is not None:
                    guard.armed = True  # from here a SIGTERM exits through the cleanup below
                try:
                    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
                finally:
                    os.close(fd)
                yield tmp
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            finally:
                if guard is not None:
                    guard.armed = False  # the cleanup is not cut short; a signal now waits
            _fsync_dir(target.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: str | os.PathLike, obj: Any, **kw) -> None:
    write_text(target, json.dumps(obj, **kw))
