"""Fuzzing the GGUF reader: hypothesis (always) and atheris/libFuzzer (when installed).

Both are seeded and bounded so CI is deterministic and quick (~20 s together). The property:
`parse` either returns a file whose every tensor lies inside the data section, or raises a
GGUFError that names a field and a byte offset inside the file; never another exception,
never more than 1 s, and never memory out of proportion to the file (tracemalloc peak at
most 64 KiB + 32 x the file's size: the metadata becomes Python objects, a few times the
bytes they take in the file, but nothing is ever sized by a count read from the file).
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.qtypes import QTYPES
from test_hostile import ARRAY, BASE, SCALAR, STRING, U64_MAX, build, corpus
from workbench.gguf import GGUFError, parse

MAX_EXAMPLES = 800
BOUNDARY = [0, 1, 2, 3, 4, 5, 31, 32, 33, 255, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**59, 2**61,
            2**62, 2**63 - 1, 2**63, U64_MAX - 31, U64_MAX]
FUZZ = settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STATS = {"examples": 0, "parsed": 0, "errors": 0, "max_peak": 0, "max_ratio": 0.0}


def check(data: bytes) -> None:
    """The fuzzers' property, for one input."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    try:
        g = parse(data, "fuzz.gguf")
    except GGUFError as e:
        g = None
        msg = str(e)
        assert e.field and msg.startswith(f"fuzz.gguf: {e.field} at byte {e.offset}: ") and "\n" not in msg, msg
        assert 0 <= e.offset <= len(data), msg
    finally:
        elapsed = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < 1.0, f"{elapsed:.2f} s on {len(data)} bytes"
    assert peak <= 64 * 1024 + 32 * len(data), f"peak {peak} bytes for a {len(data)}-byte file"
    STATS["examples"] += 1
    STATS["max_peak"] = max(STATS["max_peak"], peak)
    if len(data) >= 1024:
        STATS["max_ratio"] = max(STATS["max_ratio"], peak / len(data))
    if g is None:
        STATS["errors"] += 1
        return
    STATS["parsed"] += 1
    end = g.data_offset
    for t in sorted(g.tensors.values(), key=lambda t: t.offset):
        assert t.offset >= end and t.offset + t.nbytes <= len(data) and t.offset % g.alignment == 0
        assert t.data.nbytes == t.nbytes
        end = t.offset + t.nbytes


# ---- structured inputs: random but well-formed files, then hostile edits ------------------

SCALAR_VALUES = {
    0: st.integers(0, 255), 1: st.integers(-128, 127), 2: st.integers(0, 2**16 - 1),
    3: st.integers(-(2**15), 2**15 - 1), 4: st.integers(0, 2**32 - 1), 5: st.integers(-(2**31), 2**31 - 1),
    6: st.floats(width=32), 7: st.booleans(), 10: st.integers(0, U64_MAX), 11: st.integers(-(2**63), 2**63 - 1),
    12: st.floats()}


def values(names):
    scalar = st.sampled_from(sorted(SCALAR)).flatmap(lambda t: st.tuples(st.just(t), SCALAR_VALUES[t]))
    flat_array = st.one_of(
        st.sampled_from(sorted(SCALAR)).flatmap(lambda t: st.lists(SCALAR_VALUES[t], max_size=4).map(
            lambda xs: (ARRAY, (t, xs)))),
        st.lists(names, max_size=5).map(lambda xs: (ARRAY, (STRING, xs))))
    nested = st.lists(flat_array.map(lambda v: v[1]), max_size=3).map(lambda xs: (ARRAY, (ARRAY, xs)))
    return st.one_of(scalar, st.tuples(st.just(STRING), names), flat_array, nested)


TYPE_IDS = sorted(QTYPES)


@st.composite
def gguf_file(draw, valid: bool = False) -> tuple[bytes, list[int]]:
    """A GGUF (random metadata of every type, random tensors of every GGML type, aligned and
    packed) and the offsets where its fields start. Unless `valid`, names and strings may be
    invalid UTF-8."""
    names = st.text(max_size=12) if valid else st.one_of(st.text(max_size=12), st.binary(max_size=6))
    alignment = draw(st.sampled_from([1, 8, 32, 64]))
    kvs = draw(st.lists(st.tuples(names, values(names)), max_size=6,
                        unique_by=lambda kv: kv[0].encode() if isinstance(kv[0], str) else kv[0]))
    kvs = [(k, t, v) for k, (t, v) in kvs if k != "general.alignment"]
    kvs.insert(draw(st.integers(0, len(kvs))), ("general.alignment", 4, alignment))
    tensors, offset = [], 0
    for i, (type_id, n_dims) in enumerate(draw(st.lists(st.tuples(st.sampled_from(TYPE_IDS), st.integers(1, 4)),
                                                        max_size=4))):
        q = QTYPES[type_id]
        dims = [q.block_size * draw(st.integers(1, 2))] + [draw(st.integers(1, 3)) for _ in range(n_dims - 1)]
        n = 1
        for d in dims:
            n *= d
        nbytes = n // q.block_size * q.type_size
        tensors.append((f"t{i}", tuple(dims), type_id, offset))
        offset += nbytes + (-nbytes % alignment)
    w_data, at = _build(kvs, tensors, alignment, offset)
    return w_data, sorted(set(at.values()))


def _build(kvs, tensors, alignment, data_bytes):
    return build(kvs, tensors, alignment=alignment, data_bytes=data_bytes)


def mutate(draw, data: bytes, fields: list[int]) -> bytes:
    """A few hostile edits, at field starts (mostly) or anywhere."""
    b = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        if not b:
            break
        at_field = [f for f in fields if f < len(b)]
        pos = draw(st.sampled_from(at_field) if at_field and draw(st.booleans()) else st.integers(0, len(b) - 1))
        kind = draw(st.sampled_from(["u64", "u32", "byte", "cut", "insert", "delete"]))
        if kind in ("u64", "u32"):
            code, top = ("<Q", U64_MAX) if kind == "u64" else ("<I", 2**32 - 1)
            v = draw(st.one_of(st.sampled_from(BOUNDARY), st.integers(0, top))) & top
            enc = struct.pack(code, v)
            b[pos : pos + len(enc)] = enc
        elif kind == "byte":
            b[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del b[pos : pos + draw(st.integers(1, 16))]
    return bytes(b)


def test_generated_files_parse():
    """The generator itself makes valid files (so the mutations start from the real format)."""

    @settings(FUZZ, max_examples=60)
    @given(gguf_file(valid=True))
    def run(f):
        check(f[0])
        parse(f[0])

    run()


@settings(FUZZ, max_examples=400)
@given(st.data())
def test_fuzz_structured(data):
    raw, fields = data.draw(gguf_file())
    check(mutate(data.draw, raw, fields))


CORPUS = [BASE] + [c.data for c in corpus() if c.data]


@FUZZ
@given(st.data())
def test_fuzz_corpus_mutations(data):
    raw = data.draw(st.sampled_from(CORPUS))
    check(mutate(data.draw, raw, list(range(0, len(raw), 4))))


@settings(FUZZ, max_examples=400)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_after_header(tail):
    check(b"GGUF\x03\x00\x00\x00" + tail)


def test_fuzz_report():
    print(f"\nhypothesis: {STATS['examples']} inputs checked, {STATS['parsed']} parsed, {STATS['errors']} "
          f"GGUFErrors; largest tracemalloc peak {STATS['max_peak']} bytes, largest peak / size of a file "
          f">= 1 KiB: {STATS['max_ratio']:.1f}")


# ---- atheris (libFuzzer, coverage-guided), when it is installed -----------------------------

ATHERIS_RUNS = 10000
ATHERIS = textwrap.dedent("""
    import struct, sys, time, tracemalloc
    import atheris
    from workbench import gguf
    from workbench.tensor import QTensor
    for f in [gguf.parse, gguf._check_overlaps, QTensor.view_of, *vars(gguf._Cursor).values()]:
        if callable(f) and hasattr(f, "__code__"):
            atheris.instrument_func(f)
        elif hasattr(f, "__func__"):
            atheris.instrument_func(f.__func__)

    def one(data):
        tracemalloc.start()
        t = time.perf_counter()
        try:
            gguf.parse(data, "fuzz.gguf")
        except gguf.GGUFError as e:
            assert e.field and 0 <= e.offset <= len(data) and "\\n" not in str(e), str(e)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.perf_counter() - t < 1.0
        assert peak <= 64 * 1024 + 32 * len(data), (peak, len(data))

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
""")


def test_atheris(tmp_path):
    pytest.importorskip("atheris")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for i, data in enumerate(CORPUS[:: max(1, len(CORPUS) // 40)]):
        (seeds / f"s{i}").write_bytes(data)
    t = time.perf_counter()
    # -rss_limit_mb=0: libFuzzer reads ru_maxrss, which Linux keeps across exec, so the child
    # would inherit the peak of this test process (models loaded by other tests); memory per
    # input is bounded by the tracemalloc assertion inside `one` instead.
    r = subprocess.run([sys.executable, "-c", ATHERIS, f"-runs={ATHERIS_RUNS}", "-seed=1", "-max_len=4096",
                        "-timeout=5", "-rss_limit_mb=0", f"-artifact_prefix={tmp_path}/", str(seeds)],
                       capture_output=True, text=True, timeout=300)
    tail = "\n".join(r.stderr.splitlines()[-25:])
    assert r.returncode == 0, tail
    done = [line for line in r.stderr.splitlines() if line.startswith("Done ")]
    print(f"\natheris: {done[-1] if done else '?'} in {time.perf_counter() - t:.1f} s")
