"""Atomic writes: write beside the target, fsync, rename, fsync the directory. A reader (or a
crash, or a kill) sees the old file or the new one, never half of one. `atomic_dir` does the
same for a directory written as a set (a saved profile): the new set replaces the old one in
one step (Linux `renameat2(RENAME_EXCHANGE)`), so profile.json never sits beside the trace of
another run.

While an atomic write is in progress in the main thread, SIGTERM (when it has its default
action) becomes `SystemExit(143)`: the temporary file is removed, every enclosing `finally`
runs, and the process then exits with status 143. SIGKILL cannot be caught: it may leave a
hidden `.<name>.<pid>.<random>.tmp` beside the target. Such a stray is never read and never
collides with a later write (each write takes a fresh random name); the next write of the
same target removes it once process <pid> is gone (`sweep`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import shutil
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


def temp_prefix(name: str) -> str:
    """The start of a temporary's name for `name`, which `sweep` recognises: `.<name>.<pid>.`"""
    return f".{name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep(parent: str | os.PathLike, name: str) -> list[Path]:
    """Remove what killed writers of `name` left in `parent`: the hidden temporaries
    `.<name>.<pid>.<random>.tmp` (files or directories) whose process no longer runs.
    Temporaries of running writers are left alone. Returns what was removed."""
    removed = []
    parent = Path(parent)
    head = f".{name}."
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        if not (e.name.startswith(head) and e.name.endswith(".tmp")):
            continue
        pid = e.name[len(head):].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success it replaces the target.
    On any exception (SIGTERM included, see the module doc) the target is left as it was and
    the temporary file is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _sigterm_as_exit() as guard:
        sweep(target.parent, target.name)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target.name), suffix=".tmp")
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


# ---- a directory written as a set -------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    """libc's renameat2, looked up once (in the process's own symbols: no ldconfig run), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE). False where the system
    or file system cannot; other errors raise OSError."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(root: Path) -> None:
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(d))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(old: Path, new: Path, owned) -> None:
    """Entries of `old` that the writer neither wrote nor owns (a user's notes, py-spy
    output) go into `new` as hard links (copies where links fail)."""
    for e in os.scandir(old):
        dst = new / e.name
        if owned(e.name) or os.path.lexists(dst) or (e.name.startswith(".") and e.name.endswith(".tmp")):
            continue
        if e.is_dir(follow_symlinks=False):
            shutil.copytree(e.path, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(e.path, str(dst))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, owned=lambda name: False) -> Iterator[Path]:
    """Yield a temporary directory beside `target` to write a set of files into; on success
    the set replaces `target` in one step. Entries of an existing `target` that the new set
    does not contain are carried over unless `owned(name)` says they belong to the writer's
    set (a plot the new run does not draw must not survive beside it). On any exception
    (SIGTERM included) `target` is left as it was and the temporary directory is removed.

    Where the file system cannot exchange two directories in one step, the old directory is
    first renamed aside; a kill in that instant leaves it as a hidden `.<name>.<pid>.old`
    beside the target, never deleted."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _sigterm_as_exit() as guard:
        sweep(target.parent, target.name)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target.name), suffix=".tmp"))
        try:
            try:
                if guard is not None:
                    guard.armed = True
                os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
                yield tmp
                _fsync_tree(tmp)  # what was written, on disk before it is published
                if target.exists():
                    _carry_over(target, tmp, owned)
                if not target.exists():
                    os.rename(tmp, target)
                elif not _exchange(tmp, target):  # then tmp holds the old set, removed below
                    aside = target.with_name(f".{target.name}.{os.getpid()}.old")
                    os.rename(target, aside)
                    os.rename(tmp, target)
                    os.rename(aside, tmp)
            finally:
                if guard is not None:
                    guard.armed = False
            _fsync_dir(target.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
