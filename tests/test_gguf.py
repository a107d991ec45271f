"""The GGUF reader: real file, synthetic files, and structural errors."""

import struct
import time

import numpy as np
import pytest

from workbench.gguf import GGUFError, open_gguf, parse
from workbench.synth import gguf_bytes, quantize_q8_0


def small_file(**kw):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    meta = {"general.architecture": "llama", "general.alignment": 64, "a.u8": np.uint8(3).item(),
            "a.str": "héllo", "a.list": ["x", "yy", ""], "a.f32s": np.arange(5, dtype=np.float32),
            "a.bool": True, "a.i64": 2**40, "a.float": 0.5}
    tensors = {"w.f32": ("F32", (64, 4), w.tobytes()), "w.q8": ("Q8_0", (64, 4), quantize_q8_0(w))}
    return gguf_bytes(meta, tensors, alignment=64, **kw), w


def test_real_smollm2_header(smollm2_path):
    t = time.perf_counter()
    g = open_gguf(smollm2_path)
    elapsed = time.perf_counter() - t
    with g:
        assert g.version == 3 and len(g.tensors) == 272
        assert g.architecture == "llama"
        assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152
        assert len(g.metadata["tokenizer.ggml.merges"]) == 48900
        emb = g.tensors["token_embd.weight"]
        assert emb.qtype.name == "Q8_0" and emb.shape == (49152, 576) and emb.nbytes == 49152 * 612
        assert emb.data.base is not None  # a view of the mapping, not a copy
        counts = {}
        for t_ in g.tensors.values():
            counts[t_.qtype.name] = counts.get(t_.qtype.name, 0) + 1
        assert counts == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    assert elapsed < 1.0  # typically ~0.1 s; llama.cpp's vocab-only load is ~0.2 s


def test_against_gguf_py(smollm2_path):
    """Offsets, shapes and types agree with gguf-py's reader."""
    from gguf import GGUFReader

    r = GGUFReader(str(smollm2_path))
    with open_gguf(smollm2_path) as g:
        assert len(r.tensors) == len(g.tensors)
        for t in r.tensors:
            ours = g.tensors[t.name]
            assert ours.offset == t.data_offset
            assert ours.dims == tuple(int(x) for x in t.shape)
            assert ours.qtype.id == int(t.tensor_type)
            assert ours.nbytes == t.n_bytes


def test_synthetic_roundtrip():
    data, w = small_file()
    g = parse(data)
    assert g.metadata["a.str"] == "héllo" and g.metadata["a.list"] == ["x", "yy", ""]
    assert g.metadata["a.bool"] is True and g.metadata["a.i64"] == 2**40
    np.testing.assert_array_equal(g.metadata["a.f32s"], np.arange(5, dtype=np.float32))
    assert g.alignment == 64 and g.data_offset % 64 == 0
    np.testing.assert_array_equal(g.tensors["w.f32"].dequantize(), w)
    np.testing.assert_allclose(g.tensors["w.q8"].dequantize(), w, atol=np.abs(w).max() / 100)


def test_version_2_reads():
    data, _ = small_file(version=2)
    assert parse(data).version == 2


@pytest.mark.parametrize("mutate, field", [
    (lambda b: b"GGUX" + b[4:], "magic"),
    (lambda b: b[:4] + struct.pack("<I", 7) + b[8:], "version"),
    (lambda b: b[:8] + struct.pack("<Q", 2**40) + b[16:], "tensor count"),
    (lambda b: b[:16] + struct.pack("<Q", 2**60) + b[24:], "metadata count"),
    (lambda b: b[:24] + struct.pack("<Q", 2**50) + b[32:], "metadata[0] key"),
    (lambda b: b[:3], "magic"),
    (lambda b: b[:30], "metadata count"),
    (lambda b: b[:200], "metadata"),
])
def test_structural_errors_name_the_field(mutate, field):
    data, _ = small_file()
    with pytest.raises(GGUFError) as e:
        parse(mutate(data), "bad.gguf")
    assert e.value.field.startswith(field), str(e.value)
    assert "bad.gguf" in str(e.value) and "at byte" in str(e.value)


def test_every_truncation_is_a_clean_error():
    data, _ = small_file()
    header_end = parse(data).data_offset
    for n in range(0, header_end + 256, 3):
        if n >= len(data):
            break
        with pytest.raises(GGUFError):
            parse(data[:n], "cut.gguf")


def test_unknown_tensor_type_and_offset_past_end():
    data, _ = small_file()
    g = parse(data)
    # locate the Q8_0 tensor's type field (after its name and dims) and corrupt it
    name = b"w.q8"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4 + 16
    bad = data[:at] + struct.pack("<I", 99) + data[at + 4 :]
    with pytest.raises(GGUFError, match="unknown GGML type 99"):
        parse(bad)
    bad = data[:at + 4] + struct.pack("<Q", 2**40) + data[at + 12 :]
    with pytest.raises(GGUFError, match="offset"):
        parse(bad)
    assert g.tensors["w.q8"].qtype.name == "Q8_0"


def test_file_changed_on_disk_is_refused(tmp_path):
    data, _ = small_file()
    p = tmp_path / "m.gguf"
    p.write_bytes(data)
    g = open_gguf(p)
    g.check_unchanged()
    with open(p, "r+b") as f:
        f.truncate(len(data) // 2)
    with pytest.raises(GGUFError, match="changed on disk"):
        g.check_unchanged()
    g.close()


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    with pytest.raises(GGUFError, match="empty"):
        open_gguf(p)
    with pytest.raises(FileNotFoundError):
        open_gguf(tmp_path / "nope.gguf")


def _read_both(buf, at, count):
    """string_array (numpy fast path) and the one-at-a-time reader on the same bytes:
    (strings or error, final position) each."""
    from workbench.gguf import _Cursor

    out = []
    for read in (lambda c: c.string_array(count, "arr"), lambda c: c._read_strings(0, count, "arr")):
        c = _Cursor(buf, "f.gguf")
        c.pos = at
        try:
            out.append((read(c), c.pos))
        except GGUFError as e:
            out.append((str(e), e.field, e.offset, c.pos))
    return out


def test_string_arrays_fast_path_equals_one_at_a_time():
    """Empty strings, strings of 256+ bytes, NULs, invalid and split UTF-8, truncations and
    corrupted lengths: the same strings, positions and errors as reading one at a time."""
    import random

    rng = random.Random(7)
    odd = [b"", b"\x00", b"\x00" * 9, "é".encode(), b"\xff", b"\xe2\x82", b"\x82", "▁▁".encode(), b"x" * 300,
           b"y" * 255, b"z" * 256, b"\x00" * 7 + b"\x05", b"ab\x00cd", "\ufffd".encode()]
    for _ in range(3000):
        k = rng.randint(0, 40)
        parts = []
        for _ in range(k):
            s = (bytes(rng.choice(b"abcdefgh\xc3\xa9 ") for _ in range(rng.randint(0, 12)))
                 if rng.random() < 0.6 else rng.choice(odd))
            parts.append(struct.pack("<Q", len(s)) + s)
        blob = b"".join(parts)
        if blob and rng.random() < 0.3:
            blob = blob[: rng.randint(0, len(blob))]
        if blob and rng.random() < 0.2:
            j = rng.randrange(len(blob))
            blob = blob[:j] + bytes([rng.randrange(256)]) + blob[j + 1:]
        pre = b"P" * rng.randint(0, 5)
        buf = pre + blob + bytes(rng.randrange(256) for _ in range(rng.randint(0, 20)))
        count = max(0, k + (rng.randint(-2, 2) if k > 2 else 0))
        fast, slow = _read_both(buf, len(pre), count)
        assert fast == slow, (buf, count)


def test_vocabulary_read_without_a_python_step_per_string(smollm2_path, monkeypatch):
    """The real vocabulary and merges go through the fast path whole."""
    from workbench import gguf

    one_at_a_time = []
    real = gguf._Cursor._read_strings
    monkeypatch.setattr(gguf._Cursor, "_read_strings",
                        lambda self, first, count, field: one_at_a_time.append((field, count - first))
                        or real(self, first, count, field))
    with open_gguf(smollm2_path) as g:
        assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152
    assert not [f for f, n in one_at_a_time if n > 1], one_at_a_time
    with open(smollm2_path, "rb") as f:  # and equal to reading them one at a time
        head = f.read(2_000_000)
    with open_gguf(smollm2_path) as g:
        at = g.key_offsets["tokenizer.ggml.merges"]
        merges = g.metadata["tokenizer.ggml.merges"]
    at += 8 + len("tokenizer.ggml.merges") + 4 + 4 + 8  # key, value type, element type, count
    fast, slow = _read_both(head, at, len(merges))
    assert fast == slow and fast[0] == merges
