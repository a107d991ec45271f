"""Every CLI flag validated: through `python -m workbench`, a bad value gives one line on stderr
naming the problem, a non-zero exit (2 for a bad flag, 1 for a failure while running), no
traceback and nothing on stdout."""

from __future__ import annotations

import subprocess
import sys

import pytest

TINY, NOTGGUF, DIR, FILE = "{tiny}", "{notgguf}", "{dir}", "{file}"

# (id, args, expected exit code, text the one line must contain)
CASES = [
    # backends
    ("backend-unknown", ["generate", TINY, "--prompt", "x", "--backend", "cuda"], 2, "invalid choice: 'cuda'"),
    ("bench-backends-unknown", ["bench", TINY, "--backends", "numpy,cuda"], 1, "unknown backend(s) ['cuda']"),
    ("soak-backends-unknown", ["soak", TINY, "--backends", "cuda", "--minutes", "0.01"], 1,
     "unknown backend(s) ['cuda']"),
    ("soak-minutes-zero", ["soak", TINY, "--minutes", "0"], 2, "must be > 0, got 0"),
    ("weight-cache-unknown", ["generate", TINY, "--prompt", "x", "--weight-cache", "f16"], 2, "invalid choice: 'f16'"),
    # token ids
    ("token-id-out-of-range", ["logits", TINY, "--token-ids", "1,99999", "--out", FILE], 1,
     "token id 99999 is out of range 0..287"),
    ("token-id-negative", ["logits", TINY, "--token-ids=-1,2", "--out", FILE], 2, "token ids must be >= 0"),
    ("token-id-not-int", ["logits", TINY, "--token-ids", "a,b", "--out", FILE], 2, "comma-separated integers"),
    ("token-ids-empty", ["logits", TINY, "--token-ids", ",", "--out", FILE], 2, "no token ids given"),
    ("logits-out-is-dir", ["logits", TINY, "--token-ids", "1", "--out", DIR], 1, "is a directory"),
    # counts
    ("n-negative", ["generate", TINY, "--prompt", "x", "-n", "-3"], 2, "argument -n: must be >= 0, got -3"),
    ("n-not-int", ["generate", TINY, "--prompt", "x", "-n", "many"], 2, "expected a whole number, got 'many'"),
    ("profile-n-negative", ["profile", TINY, "--prompt", "x", "-n", "-1", "--out", DIR], 2, "must be >= 0"),
    # sampling
    ("temperature-negative", ["generate", TINY, "--prompt", "x", "--temperature", "-1"], 2, "must be >= 0"),
    ("temperature-nan", ["generate", TINY, "--prompt", "x", "--temperature", "nan"], 2, "must be >= 0, got nan"),
    ("top-k-negative", ["generate", TINY, "--prompt", "x", "--top-k", "-5"], 2, "argument --top-k: must be >= 0"),
    ("top-p-zero", ["generate", TINY, "--prompt", "x", "--top-p", "0"], 2, "must be in (0, 1]"),
    ("top-p-big", ["generate", TINY, "--prompt", "x", "--top-p", "1.5"], 2, "must be in (0, 1]"),
    ("min-p-one", ["generate", TINY, "--prompt", "x", "--min-p", "1"], 2, "must be in [0, 1)"),
    ("repeat-penalty-zero", ["generate", TINY, "--prompt", "x", "--repeat-penalty", "0"], 2, "must be > 0"),
    ("seed-negative", ["generate", TINY, "--prompt", "x", "--seed=-1"], 2, "argument --seed: must be >= 0"),
    ("seed-not-int", ["generate", TINY, "--prompt", "x", "--seed", "1.5"], 2, "expected a whole number"),
    # files and models
    ("missing-file", ["generate", "/nonexistent/m.gguf", "--prompt", "x"], 1,
     "/nonexistent/m.gguf: no such file, and not a known model name"),
    ("unknown-model", ["generate", "llama-70b", "--prompt", "x"], 1, "llama-70b: no such file, and not a known"),
    ("fetch-unknown-model", ["fetch", "llama-70b"], 1, "unknown model 'llama-70b'; known models: gemma3, smollm2"),
    ("model-is-dir", ["inspect", DIR], 1, "not a file"),
    ("not-gguf", ["inspect", NOTGGUF], 1, "magic at byte 0: expected b'GGUF', found b'PK\\x03\\x04': not a GGUF"),
    ("not-gguf-generate", ["generate", NOTGGUF, "--prompt", "x"], 1, "not a GGUF file"),
    # profile
    ("touch-unknown", ["profile", TINY, "--prompt", "x", "--out", DIR, "--touch", "logical,bogus"], 1,
     "--touch takes logical, mapped, cached; not ['bogus']"),
    ("touch-typo", ["profile", TINY, "--prompt", "x", "--out", DIR, "--touch", "maped"], 1, "not ['maped']"),
    ("profile-out-is-file", ["profile", TINY, "--prompt", "x", "--out", FILE + ".exists"], 1,
     "exists and is not a directory"),
    ("madvise-unknown", ["profile", TINY, "--prompt", "x", "--out", DIR, "--madvise", "often"], 2,
     "invalid choice: 'often'"),
    # threads and repeats
    ("bench-threads-zero", ["bench", TINY, "--threads", "0"], 2, "argument --threads: must be >= 1, got 0"),
    ("bench-threads-negative", ["bench", TINY, "--threads=-2"], 2, "must be >= 1, got -2"),
    ("bench-threads-not-int", ["bench", TINY, "--threads", "two"], 2, "expected a whole number, got 'two'"),
    ("bench-repeat-zero", ["bench", TINY, "--repeat", "0"], 2, "argument --repeat: must be >= 1"),
    ("bench-pp-zero", ["bench", TINY, "--pp", "0,64"], 2, "expected positive whole numbers"),
    ("load-bench-threads-zero", ["load-bench", TINY, "--threads", "0,1", "--out", FILE], 2,
     "expected positive whole numbers"),
    ("load-bench-strategy-unknown", ["load-bench", TINY, "--strategies", "mmap,teleport", "--out", FILE], 1,
     "unknown strategies ['teleport']"),
    ("load-trial-threads-zero", ["load-trial", TINY, "--threads", "0"], 2, "must be >= 1"),
    ("overhead-repeat-zero", ["overhead", TINY, "--repeat", "0"], 2, "must be >= 1"),
    # the command line itself
    ("no-command", [], 2, "the following arguments are required: COMMAND"),
    ("unknown-command", ["teleport"], 2, "invalid choice: 'teleport'"),
    ("unknown-flag", ["inspect", TINY, "--bogus"], 2, "unrecognized arguments: --bogus"),
    ("missing-prompt", ["generate", TINY], 2, "the following arguments are required: --prompt"),
    ("diff-missing-profiles", ["diff", DIR + "/a", DIR + "/b"], 1, "cannot read a profile"),
]


# Runs each case as `python -m workbench` does (runpy, run_name "__main__", its own sys.argv,
# SystemExit caught), all in one child process so the interpreter and imports start once.
DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for id_, argv in json.loads(sys.stdin.read()):
    sys.argv = ["workbench", *argv]
    o, e = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            runpy.run_module("workbench", run_name="__main__", alter_sys=True)
        except SystemExit as x:
            code = x.code if isinstance(x.code, int) else 1
    out[id_] = (code, o.getvalue(), e.getvalue())
print(json.dumps(out))
"""
# and these through a real `python -m workbench` each, side by side
REAL = ["backend-unknown", "token-id-out-of-range", "missing-file",
        "bench-threads-zero", "not-gguf"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_path):
    d = tmp_path_factory.mktemp("cli")
    notgguf = d / "x.gguf"
    notgguf.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    (d / "out.npy.exists").write_bytes(b"")
    subs = {TINY: str(tiny_model_path), NOTGGUF: str(notgguf), DIR: str(d), FILE: str(d / "out.npy")}

    def sub(a):
        for k, v in subs.items():
            a = a.replace(k, v)
        return a

    return {id_: [sub(a) for a in args] for id_, args, _, _ in CASES}


@pytest.fixture(scope="module")
def results(setup):
    """id -> (exit code, stdout, stderr) of every case, run in one child process."""
    import json

    r = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(list(setup.items())), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return {k: tuple(v) for k, v in json.loads(r.stdout).items()}


def check(rc, out, err, code, text):
    assert rc == code, (rc, err)
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "error: " in err and text in err, err
    assert out == "", out


@pytest.mark.parametrize("id_, args, code, text", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(results, id_, args, code, text):
    check(*results[id_], code, text)


def test_real_processes(setup):
    """A sample through `python -m workbench` itself, a few at a time."""
    expect = {id_: (code, text) for id_, _, code, text in CASES}
    procs = [(id_, subprocess.Popen([sys.executable, "-m", "workbench", *setup[id_]], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)) for id_ in REAL]
    for id_, p in procs:
        out, err = p.communicate(timeout=120)
        check(p.returncode, out, err, *expect[id_])


def test_valid_flags_still_work(tiny_model_path, tmp_path):
    """The validators accept the edges they should (0 tokens, seed 0, top-p 1, min-p 0)."""
    r = subprocess.run([sys.executable, "-m", "workbench", "generate", str(tiny_model_path), "--prompt", "hi",
                        "-n", "0", "--seed", "0", "--top-p", "1", "--min-p", "0", "--top-k", "0", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "l.npy"
    r = subprocess.run([sys.executable, "-m", "workbench", "logits", str(tiny_model_path), "--token-ids", "0,287",
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and out.exists(), r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "workbench", "--debug", "inspect", "/nonexistent/m.gguf"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" in r.stderr
