"""Hostile GGUF files: a corpus of broken and malicious files, each of which must end in one
`GGUFError` naming the field and the byte offset where that field starts, quickly, without
allocating more than the file's size, and through the CLI as one line with no traceback.
Then the model-level errors of a valid GGUF: unsupported architecture, missing tensor,
shapes or hyperparameters that do not match the config.

The corpus is built by `Writer`, a low-level GGUF writer independent of the reader that
records where every field starts, so each case can say exactly which field at which byte
the reader must blame. `corpus()` is reused by tests/test_fuzz.py as the fuzzers' seeds.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest

from workbench.gguf import GGUFError, open_gguf, parse

U64_MAX = 2**64 - 1
# scalar value types: GGUF type id -> struct code
SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
F32, F16, Q8_0, Q4_K = 0, 1, 8, 12


class Writer:
    """Writes GGUF fields one by one and remembers where each starts (`at[label]`)."""

    def __init__(self):
        self.buf = bytearray()
        self.at: dict[str, int] = {}

    def put(self, label: str, data: bytes) -> None:
        self.at.setdefault(label, len(self.buf))
        self.buf += data

    def u32(self, label: str, v: int) -> None:
        self.put(label, struct.pack("<I", v))

    def u64(self, label: str, v: int) -> None:
        self.put(label, struct.pack("<Q", v))

    def string(self, label: str, s: str | bytes) -> None:
        b = s.encode("utf-8") if isinstance(s, str) else s
        self.u64(label + ".len", len(b))
        self.put(label, b)

    def value(self, label: str, vtype: int, v) -> None:
        if vtype == STRING:
            self.string(label, v)
        elif vtype == ARRAY:
            etype, items = v
            self.u32(label + ".etype", etype)
            self.u64(label + ".count", len(items))
            for i, x in enumerate(items):
                self.value(f"{label}[{i}]", etype, x)
        else:
            self.put(label, struct.pack(SCALAR[vtype], v))


KVS = [
    ("general.architecture", STRING, "llama"),
    ("general.alignment", 4, 32),
    ("a.u8", 0, 7), ("a.i8", 1, -7), ("a.u16", 2, 65535), ("a.i16", 3, -2), ("a.u32", 4, 2**32 - 1),
    ("a.i32", 5, -1), ("a.f32", 6, 0.5), ("a.bool", 7, True), ("a.str", STRING, "héllo"), ("a.u64", 10, U64_MAX),
    ("a.i64", 11, -(2**63)), ("a.f64", 12, 1e300),
    ("a.arr_i32", ARRAY, (5, [1, 2, 3])),
    ("a.arr_str", ARRAY, (STRING, ["x", "", "yy"])),
    ("a.arr_arr", ARRAY, (ARRAY, [(0, [1, 2]), (STRING, ["z"])])),  # one level of nesting is allowed
]
# (name, dims, type, offset): F32 8x2 = 64 bytes, Q8_0 32x2 = 68, F16 2x2x2 = 16, F32 1x1x1x1 = 4,
# the last one ending exactly at the end of the file (no trailing padding)
TENSORS = [("w.f32", (8, 2), F32, 0), ("w.q8", (32, 2), Q8_0, 64), ("w.f16", (2, 2, 2), F16, 160),
           ("w.4d", (1, 1, 1, 1), F32, 192)]
DATA_BYTES = 196


def build(kvs=KVS, tensors=TENSORS, version=3, n_kv=None, n_tensors=None, alignment=32,
          data_bytes=DATA_BYTES) -> tuple[bytes, dict[str, int]]:
    """A GGUF image and the offset of each field: kv{i}.key(.len), kv{i}.type, kv{i}.value...,
    ti{i}.name(.len), ti{i}.n_dims, ti{i}.dims[j], ti{i}.type, ti{i}.offset, data."""
    w = Writer()
    w.put("magic", b"GGUF")
    w.u32("version", version)
    w.u64("n_tensors", len(tensors) if n_tensors is None else n_tensors)
    w.u64("n_kv", len(kvs) if n_kv is None else n_kv)
    for i, (key, vtype, v) in enumerate(kvs):
        w.string(f"kv{i}.key", key)
        w.u32(f"kv{i}.type", vtype)
        w.value(f"kv{i}.value", vtype, v)
    for i, (name, dims, ttype, offset) in enumerate(tensors):
        w.string(f"ti{i}.name", name)
        w.u32(f"ti{i}.n_dims", len(dims))
        for j, d in enumerate(dims):
            w.u64(f"ti{i}.dims[{j}]", d)
        w.u32(f"ti{i}.type", ttype)
        w.u64(f"ti{i}.offset", offset)
    w.put("pad", b"\0" * (-len(w.buf) % alignment))
    w.put("data", np.random.default_rng(0).integers(0, 256, data_bytes, dtype=np.uint8).tobytes())
    return bytes(w.buf), w.at


BASE, AT = build()


def patch(fields: dict[str, tuple[str, int]], base=(BASE, AT)) -> bytes:
    """A copy of `base` with each labelled field overwritten: {label: (struct code, value)}."""
    data, at = base
    b = bytearray(data)
    for label, (code, v) in fields.items():
        struct.pack_into(code, b, at[label], v)
    return bytes(b)


def kv_index(key: str) -> int:
    return [k for k, _, _ in KVS].index(key)


def with_kv(key: str, vtype: int, v) -> tuple[bytes, dict]:
    """The base file with one metadata entry's type and value replaced (or added)."""
    keys = [k for k, _, _ in KVS]
    kvs = list(KVS)
    if key in keys:
        kvs[keys.index(key)] = (key, vtype, v)
    else:
        kvs.append((key, vtype, v))
    return build(kvs)


@dataclass
class Case:
    id: str
    data: bytes
    field: str  # the reported field must start with this
    offset: int | None  # where that field starts; None: anywhere in the file


def corpus() -> list[Case]:
    cases: list[Case] = []

    def add(id_, data, field, offset=None):
        cases.append(Case(id_, data, field, offset))

    # magic and header
    add("empty", b"", "magic", 0)
    add("3-bytes", b"GGU", "magic", 0)
    for m in (b"GGUX", b"FUGG", b"ggml", b"PK\x03\x04", b"\0\0\0\0", b"\x7fELF"):
        add(f"magic-{m!r}", m + BASE[4:], "magic", 0)
    for v in (0, 1, 4, 2**31, 2**32 - 1, 0x03000000):
        add(f"version-{v}", patch({"version": ("<I", v)}), "version", 4)
    add("cut-in-version", BASE[:6], "version", 4)
    add("cut-in-tensor-count", BASE[:12], "tensor count", 8)
    add("cut-in-metadata-count", BASE[:20], "metadata count", 16)
    for n in (U64_MAX, 2**63, 2**40, 2**32, 2**59):  # 2**59 * 32 bytes per tensor wraps to 0 in 64 bits
        add(f"tensor-count-{n}", patch({"n_tensors": ("<Q", n)}), "tensor count", 8)
    for n in (U64_MAX, 2**63, 2**32, 2**60):
        add(f"metadata-count-{n}", patch({"n_kv": ("<Q", n)}), "metadata count", 16)
    add("metadata-count-one-too-many", build(n_kv=len(KVS) + 1)[0], "", None)
    add("metadata-count-zero", build(n_kv=0)[0], "", None)
    add("tensor-count-one-too-many", build(n_tensors=len(TENSORS) + 1)[0], "tensor", None)

    # keys
    for n in (U64_MAX, 2**63, len(BASE)):
        add(f"key-length-{n}", patch({"kv0.key.len": ("<Q", n)}), "metadata[0] key", AT["kv0.key.len"])
    for bad in (b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"general.\x80name", b"\xf4\x90\x80\x80"):
        data, at = build([(bad, STRING, "x")] + KVS[1:])
        add(f"key-not-utf8-{bad!r}", data, "metadata[0] key", at["kv0.key.len"])
    data, at = build(KVS + [("a.u8", 0, 1)])
    add("duplicate-key", data, "metadata 'a.u8'", at[f"kv{len(KVS)}.key.len"])
    i = kv_index("a.u8")
    for t in (13, 99, 2**32 - 1):
        add(f"value-type-{t}", patch({f"kv{i}.type": ("<I", t)}), "metadata 'a.u8' type", AT[f"kv{i}.type"])

    # strings
    i = kv_index("a.str")
    for n in (U64_MAX, 2**63, len(BASE) - AT[f"kv{i}.value"] + 1):
        add(f"string-length-{n}", patch({f"kv{i}.value.len": ("<Q", n)}), "metadata 'a.str'",
            AT[f"kv{i}.value.len"])
    data, at = with_kv("a.str", STRING, b"caf\xe9")
    add("string-not-utf8", data, "metadata 'a.str'", at[f"kv{i}.value.len"])

    # arrays: unknown element type, counts that overflow (in 64-bit arithmetic they would wrap
    # to a small number: 2**61 x 8 bytes, 2**62 x 4, 2**63 x 2), counts past the end
    i = kv_index("a.arr_i32")
    lab = f"kv{i}.value"
    for t in (13, 2**32 - 1):
        add(f"array-element-type-{t}", patch({lab + ".etype": ("<I", t)}), "metadata 'a.arr_i32' element type",
            AT[lab + ".etype"])
    for etype, n in ((10, 2**61), (4, 2**62), (2, 2**63), (0, U64_MAX), (12, 2**60)):
        add(f"array-count-{etype}x{n}", patch({lab + ".etype": ("<I", etype), lab + ".count": ("<Q", n)}),
            "metadata 'a.arr_i32' count", AT[lab + ".count"])
    add("array-count-one-too-many", patch({lab + ".count": ("<Q", 4)}), "", None)  # eats the next key
    i = kv_index("a.arr_str")
    lab = f"kv{i}.value"
    for n in (U64_MAX, 2**61, 2**40):
        add(f"string-array-count-{n}", patch({lab + ".count": ("<Q", n)}), "metadata 'a.arr_str' count",
            AT[lab + ".count"])
    for n in (U64_MAX, 2**63, len(BASE)):
        add(f"string-array-element-length-{n}", patch({lab + "[1].len": ("<Q", n)}),
            "metadata 'a.arr_str'[1] length", AT[lab + "[1].len"])
    i = kv_index("a.arr_arr")
    lab = f"kv{i}.value"
    for n in (U64_MAX, 2**61, 2**40):
        add(f"array-of-arrays-count-{n}", patch({lab + ".count": ("<Q", n)}), "metadata 'a.arr_arr' count",
            AT[lab + ".count"])
    add("array-of-arrays-count-one-too-many", patch({lab + ".count": ("<Q", 3)}), "", None)
    add("nested-array-count", patch({lab + "[0].count": ("<Q", 2**62)}), "metadata 'a.arr_arr'[0] count",
        AT[lab + "[0].count"])
    add("nested-array-element-type", patch({lab + "[1].etype": ("<I", 77)}),
        "metadata 'a.arr_arr'[1] element type", AT[lab + "[1].etype"])
    data, at = build(KVS + [("a.deep", ARRAY, (ARRAY, [(ARRAY, [])]))])
    add("arrays-nested-three-deep", data, "metadata 'a.deep'[0] element type", at[f"kv{len(KVS)}.value[0].etype"])

    # general.alignment: zero, not a power of two, negative, of the wrong type; huge
    i = kv_index("general.alignment")
    for vtype, v in ((4, 0), (4, 3), (4, 48), (4, 2**32 - 1), (5, -32), (11, -(2**63)), (6, 32.0), (12, 32.0),
                     (STRING, "32"), (7, True), (ARRAY, (4, [32])), (10, 0)):
        data, at = with_kv("general.alignment", vtype, v)
        add(f"alignment-{vtype}-{v!r}", data, "metadata 'general.alignment'", at[f"kv{i}.key.len"])
    add("alignment-2**31", with_kv("general.alignment", 4, 2**31)[0], "tensor 'w.f32' offset", AT["ti0.offset"])

    # tensor infos
    for n in (U64_MAX, 2**63, len(BASE)):
        add(f"tensor-name-length-{n}", patch({"ti0.name.len": ("<Q", n)}), "tensor[0] name", AT["ti0.name.len"])
    data, at = build(tensors=[(b"w.\xff", *TENSORS[0][1:])] + TENSORS[1:])
    add("tensor-name-not-utf8", data, "tensor[0] name", at["ti0.name.len"])
    data, at = build(tensors=TENSORS[:1] + [("w.f32", *TENSORS[1][1:])] + TENSORS[2:])
    add("duplicate-tensor-name", data, "tensor 'w.f32'", at["ti1.name.len"])
    for n in (0, 5, 2**32 - 1):
        add(f"n_dims-{n}", patch({"ti0.n_dims": ("<I", n)}), "tensor 'w.f32' n_dims", AT["ti0.n_dims"])
    for d in (0, U64_MAX, 2**63, 2**62):  # 0, -1 and INT64_MIN as int64, and past the cap
        add(f"dim-{d}", patch({"ti0.dims[0]": ("<Q", d)}), "tensor 'w.f32' dims", AT["ti0.dims[0]"])
    add("dims-overflow", patch({f"ti2.dims[{j}]": ("<Q", 2**31) for j in range(3)}), "tensor 'w.f16' dims",
        AT["ti2.dims[0]"])
    add("dims-wrap-to-zero", patch({"ti0.dims[0]": ("<Q", 2**32), "ti0.dims[1]": ("<Q", 2**32)}),
        "tensor 'w.f32' dims", AT["ti0.dims[0]"])
    add("dims-bytes-past-end", patch({"ti0.dims[0]": ("<Q", 2**30), "ti0.dims[1]": ("<Q", 2**30)}),
        "tensor 'w.f32' offset", AT["ti0.offset"])
    for t in (4, 5, 31, 36, 40, 2**32 - 1):
        add(f"tensor-type-{t}", patch({"ti0.type": ("<I", t)}), "tensor 'w.f32' type", AT["ti0.type"])
    add("block-multiple-q8_0", patch({"ti1.dims[0]": ("<Q", 48)}), "tensor 'w.q8' dims", AT["ti1.dims[0]"])
    add("block-multiple-q4_k", patch({"ti1.type": ("<I", Q4_K)}), "tensor 'w.q8' dims", AT["ti1.dims[0]"])
    for off in (U64_MAX - 31, 2**63, 224, 192 + 32):
        add(f"offset-past-end-{off}", patch({"ti3.offset": ("<Q", off)}), "tensor 'w.4d' offset", AT["ti3.offset"])
    for off in (1, 65, 2**63 + 1):
        add(f"offset-misaligned-{off}", patch({"ti1.offset": ("<Q", off)}), "tensor 'w.q8' offset",
            AT["ti1.offset"])
    add("overlap-same-offset", patch({"ti1.offset": ("<Q", 0)}), "tensor 'w.q8' offset", AT["ti1.offset"])
    add("overlap-partial", patch({"ti2.offset": ("<Q", 128)}), "tensor 'w.f16' offset", AT["ti2.offset"])
    add("overlap-duplicate-span", patch({"ti3.offset": ("<Q", 160)}), "tensor 'w.4d' offset", AT["ti3.offset"])
    add("data-cut-short", BASE[:-1], "tensor 'w.4d' offset", AT["ti3.offset"])
    add("data-missing", BASE[: AT["data"]], "tensor 'w.f32' offset", AT["ti0.offset"])
    return cases


def truncations() -> list[Case]:
    """The base file cut at every byte: every prefix is broken (the last tensor ends at EOF)."""
    return [Case(f"cut-{n}", BASE[:n], "", None) for n in range(len(BASE))]


CORPUS = corpus()


def test_base_file_is_valid():
    g = parse(BASE)
    assert g.metadata["a.str"] == "héllo" and g.metadata["a.arr_str"] == ["x", "", "yy"]
    assert g.metadata["a.u64"] == U64_MAX and g.metadata["a.i64"] == -(2**63) and g.metadata["a.bool"] is True
    assert [list(a) if hasattr(a, "tolist") else a for a in g.metadata["a.arr_arr"]] == [[1, 2], ["z"]]
    assert g.data_offset == AT["data"] and g.alignment == 32
    assert [t.dims for t in g.tensors.values()] == [d for _, d, _, _ in TENSORS]
    assert max(t.offset + t.nbytes for t in g.tensors.values()) == len(BASE)
    assert len(CORPUS) >= 100, len(CORPUS)
    # integer alignments of other widths are accepted (llama.cpp writes uint32)
    for vtype in (0, 5, 10):
        assert parse(with_kv("general.alignment", vtype, 32)[0]).alignment == 32


def expect_clean_error(data: bytes, path: str = "hostile.gguf") -> GGUFError:
    """Parse `data`: must raise GGUFError, within 1 s, with a tracemalloc peak of at most the
    file's size plus 64 KiB (the parser's own fixed working set)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    try:
        with pytest.raises(GGUFError) as e:
            parse(data, path)
    finally:
        elapsed = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    assert peak <= len(data) + 64 * 1024, f"peak {peak} bytes for a {len(data)}-byte file"
    err = e.value
    msg = str(err)
    assert err.field and msg.startswith(f"{path}: {err.field} at byte {err.offset}: "), msg
    assert 0 <= err.offset <= len(data), msg
    assert "\n" not in msg and len(msg) < 400, msg
    return err


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_hostile_case(case: Case, tmp_path):
    err = expect_clean_error(case.data)
    assert err.field.startswith(case.field), f"{err} (expected field {case.field!r})"
    if case.offset is not None:
        assert err.offset == case.offset, f"{err} (expected offset {case.offset})"
    # the same through the file and its memory map
    p = tmp_path / "hostile.gguf"
    p.write_bytes(case.data)
    with pytest.raises(GGUFError) as e2:
        open_gguf(p)
    assert e2.value.field == err.field or case.id == "empty", (e2.value, err)


def test_every_truncation():
    fields = set()
    for case in truncations():
        fields.add(expect_clean_error(case.data).field.split(" ")[0])
    assert {"magic", "version", "tensor", "metadata"} <= fields, fields


def test_cli_inspect_one_line_for_every_case(tmp_path, capsys):
    """`inspect` on every corpus case and every tenth truncation: exit 1, one line, no traceback."""
    from workbench.cli import main

    p = tmp_path / "hostile.gguf"
    for case in CORPUS + truncations()[::10]:
        p.write_bytes(case.data)
        assert main(["inspect", str(p)]) == 1, case.id
        out, err = capsys.readouterr()
        assert out == "", case.id
        assert err.count("\n") == 1 and err.startswith("workbench: error: ") and " at byte " in err, (case.id, err)
        assert "Traceback" not in err


def test_cli_subprocess_sample(tmp_path):
    """A sample of cases through `python -m workbench inspect`, run side by side."""
    ids = ["empty", "magic-b'PK\\x03\\x04'", "version-50331648", "tensor-count-18446744073709551615",
           "key-not-utf8-b'\\xff\\xfe'", "array-count-10x2305843009213693952", "alignment-4-0", "n_dims-5",
           "tensor-type-40", "overlap-partial", "data-cut-short"]
    sample = [c for c in CORPUS if c.id in ids]
    assert len(sample) == len(ids), set(ids) - {c.id for c in sample}
    procs = []
    for i, c in enumerate(sample):
        p = tmp_path / f"h{i}.gguf"
        p.write_bytes(c.data)
        procs.append((c, subprocess.Popen([sys.executable, "-m", "workbench", "inspect", str(p)], text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for c, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (c.id, proc.returncode, err)
        assert out == "" and err.count("\n") == 1 and " at byte " in err and "Traceback" not in err, (c.id, err)


def test_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    t = time.perf_counter()
    with pytest.raises(GGUFError, match="not a regular file"):
        open_gguf(fifo)  # must not block waiting for a writer
    with pytest.raises(GGUFError, match="not a regular file"):
        open_gguf(tmp_path)
    assert time.perf_counter() - t < 1.0


def test_big_file_with_huge_claims_stays_small(tmp_path):
    """A 4 MiB file claiming 2**40 tensors, 2**40-long strings and arrays: the peak stays
    below the file's size, the error comes quickly."""
    pad = b"\0" * (4 << 20)
    for data in (patch({"n_tensors": ("<Q", 2**40)}) + pad,
                 patch({"kv0.key.len": ("<Q", 2**40)}) + pad,
                 patch({f"kv{kv_index('a.arr_str')}.value.count": ("<Q", 2**40)}) + pad,
                 patch({f"kv{kv_index('a.arr_i32')}.value.count": ("<Q", 2**40)}) + pad):
        expect_clean_error(data)


# ---- model level: a structurally valid GGUF that is not a model we can run ----------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny llama's metadata and tensors, to write variants of."""
    from workbench.synth import tiny_llama

    p = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    tiny_llama(p, n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, weight_type="F32")
    with open_gguf(p) as g:
        meta = {k: (v.item() if hasattr(v, "item") and v.ndim == 0 else v) for k, v in g.metadata.items()}
        meta["general.alignment"] = np.uint32(32)
        tensors = {n: (t.qtype.name, t.dims, t.data.tobytes()) for n, t in g.tensors.items()}
    return meta, tensors


def variant(tmp_path, tiny, meta=None, drop=(), tensors=None, name="variant.gguf"):
    from workbench.synth import write_gguf

    m, t = dict(tiny[0]), dict(tiny[1])
    for k, v in (meta or {}).items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    for k in drop:
        del t[k]
    for k, (dims) in (tensors or {}).items():  # replace with random F32 data of these dims
        n = int(np.prod(dims))
        t[k] = ("F32", tuple(dims), np.random.default_rng(0).standard_normal(n).astype(np.float32).tobytes())
    p = tmp_path / name
    write_gguf(p, m, t)
    return p


def load_error(path) -> str:
    import workbench

    with pytest.raises(GGUFError) as e:
        workbench.load(path)
    msg = str(e.value)
    assert "\n" not in msg and " at byte " in msg
    return msg


def test_tiny_variant_baseline_loads(tmp_path, tiny):
    import workbench

    m = workbench.load(variant(tmp_path, tiny))
    try:
        assert m.forward(m.new_state(8), [1, 2, 3]).shape == (1, m.config.n_vocab)
    finally:
        m.close()


@pytest.mark.parametrize("arch, msg", [
    ("gpt2", "architecture 'gpt2' is not supported"),
    ("qwen2", "architecture 'qwen2' is not supported"),
    ("", "general.architecture"),
    (None, "general.architecture"),
])
def test_unsupported_architecture(tmp_path, tiny, arch, msg):
    meta = {"general.architecture": arch}
    if arch:  # the hyperparameters under the new prefix, so only the architecture is wrong
        meta.update({k.replace("llama.", f"{arch}.", 1): v for k, v in tiny[0].items() if k.startswith("llama.")})
    assert msg in load_error(variant(tmp_path, tiny, meta))


@pytest.mark.parametrize("missing", ["blk.1.ffn_down.weight", "blk.0.attn_q.weight", "token_embd.weight",
                                     "output_norm.weight"])
def test_missing_required_tensor(tmp_path, tiny, missing):
    msg = load_error(variant(tmp_path, tiny, drop=[missing]))
    assert f"tensor '{missing}'" in msg and "required" in msg


@pytest.mark.parametrize("tensor, dims, expect", [
    ("blk.0.attn_q.weight", (64, 96), "(64, 64)"),  # attn_q rows != n_embd
    ("blk.1.attn_q.weight", (32, 64), "(64, 64)"),  # attn_q columns != n_embd
    ("blk.0.attn_k.weight", (64, 64), "(64, 32)"),  # n_head_kv * head_dim rows
    ("blk.0.attn_v.weight", (64, 16), "(64, 32)"),
    ("blk.0.attn_output.weight", (64, 32), "(64, 64)"),
    ("blk.0.ffn_gate.weight", (64, 64), "(64, 96)"),
    ("blk.1.ffn_up.weight", (64, 128), "(64, 96)"),
    ("blk.1.ffn_down.weight", (64, 64), "(96, 64)"),
    ("blk.0.attn_norm.weight", (32,), "(64,)"),
    ("blk.1.ffn_norm.weight", (64, 2), "(64,)"),
    ("output_norm.weight", (128,), "(64,)"),
    ("token_embd.weight", (32, 288), "(64, 288)"),
    ("output.weight", (64, 100), "(64, 288)"),
])
def test_tensor_shape_does_not_match_config(tmp_path, tiny, tensor, dims, expect):
    msg = load_error(variant(tmp_path, tiny, tensors={tensor: dims}))
    assert f"tensor '{tensor}'" in msg and f"dims {tuple(dims)}" in msg and expect in msg, msg


@pytest.mark.parametrize("meta, expect", [
    ({"llama.embedding_length": None}, "'llama.embedding_length'"),
    ({"llama.block_count": None}, "'llama.block_count'"),
    ({"llama.attention.head_count": 0}, "'llama.attention.head_count'"),
    ({"llama.attention.head_count": -4}, "'llama.attention.head_count'"),
    ({"llama.attention.head_count": 5}, "'llama.attention.head_count'"),  # does not divide n_embd
    ({"llama.attention.head_count_kv": 3}, "'llama.attention.head_count_kv'"),  # does not divide n_head
    ({"llama.attention.head_count_kv": 0}, "'llama.attention.head_count_kv'"),
    ({"llama.block_count": "two"}, "'llama.block_count'"),
    ({"llama.block_count": [1, 2]}, "'llama.block_count'"),
    ({"llama.block_count": 2.5}, "'llama.block_count'"),
    ({"llama.block_count": 0}, "'llama.block_count'"),
    ({"llama.block_count": 3}, "'blk.2."),  # one more layer than the file has
    ({"llama.context_length": 0}, "'llama.context_length'"),
    ({"llama.attention.layer_norm_rms_epsilon": "x"}, "'llama.attention.layer_norm_rms_epsilon'"),
    ({"llama.attention.layer_norm_rms_epsilon": -1.0}, "'llama.attention.layer_norm_rms_epsilon'"),
    ({"llama.rope.dimension_count": 17}, "'llama.rope.dimension_count'"),  # odd
    ({"llama.rope.dimension_count": 32}, "'llama.rope.dimension_count'"),  # > head_dim 16
    ({"llama.vocab_size": 300}, "'token_embd.weight'"),  # vocab does not match the embedding
    ({"llama.feed_forward_length": 95}, "'blk.0.ffn_gate.weight'"),
])
def test_hyperparameters_do_not_match(tmp_path, tiny, meta, expect):
    msg = load_error(variant(tmp_path, tiny, meta))
    assert expect in msg, msg


def test_model_errors_through_the_cli(tmp_path, tiny):
    bad = [variant(tmp_path, tiny, {"general.architecture": "gpt2"}, name="a.gguf"),
           variant(tmp_path, tiny, drop=["blk.1.ffn_down.weight"], name="b.gguf"),
           variant(tmp_path, tiny, tensors={"blk.0.attn_q.weight": (64, 96)}, name="c.gguf")]
    procs = [subprocess.Popen([sys.executable, "-m", "workbench", "generate", str(p), "--prompt", "hi", "-n", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in bad]
    for p, proc in zip(bad, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and err.count("\n") == 1 and str(p) in err and "Traceback" not in err, err


# ---- a file truncated or rewritten while mapped --------------------------------------------

MAPPED_SCRIPT = """
import os, shutil, sys
import workbench
from workbench.gguf import GGUFError
src, path, how, check = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "check"
shutil.copy(src, path)
m = workbench.load(path)  # weight_cache none: every forward reads the mapped blocks
m.forward(m.new_state(8), [1, 2])
g = m.gguf
if how == "truncate":
    os.truncate(path, g.data_offset // 4096 * 4096)  # every tensor page is now past the end of the file
else:  # rewritten in place, same size
    with open(path, "r+b") as f:
        f.seek(g.data_offset)
        f.write(b"\\xff" * 4096)
try:
    if check:
        m.forward(m.new_state(8), [1, 2])
    else:  # what forward did before it checked: the architecture's forward, straight on the mapping
        m.arch.forward(m.config, m.weights, m.ops, m.new_state(8), __import__("numpy").array([1, 2]))
    print("no error")
except GGUFError as e:
    print("GGUFError:", e)
"""


@pytest.mark.parametrize("how", ["truncate", "rewrite"])
def test_file_changed_under_the_mapping_is_a_clear_error(tmp_path, tiny_model_path, how):
    p = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-c", MAPPED_SCRIPT, str(tiny_model_path), str(p), how, "check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)  # not -SIGBUS
    assert r.stdout.startswith("GGUFError:") and "changed on disk since it was opened" in r.stdout, r.stdout
    assert ("size" if how == "truncate" else "rewritten") in r.stdout


def test_truncated_mapping_without_the_check_is_sigbus(tmp_path, tiny_model_path):
    """Why the check matters: reading the truncated mapping kills the process."""
    import signal

    p = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-c", MAPPED_SCRIPT, str(tiny_model_path), str(p), "truncate", "nocheck"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr)


def test_check_unchanged_when_not_mapped_or_closed(tmp_path):
    g = parse(BASE)  # parsed from memory: nothing mapped, nothing to check
    g.check_unchanged()
    p = tmp_path / "b.gguf"
    p.write_bytes(BASE)
    g = open_gguf(p)
    g.check_unchanged()
    os.replace(tmp_path / "b.gguf", tmp_path / "moved.gguf")  # renamed away: the mapping is still whole
    g.check_unchanged()
    g.close()
    with pytest.raises(ValueError, match="closed"):
        g.check_unchanged()


def test_cli_inspect_of_odd_but_valid_files(tmp_path, capsys):
    """Nested arrays print (text and JSON); control characters in names are escaped, so a file
    cannot send escape sequences to the terminal."""
    import json

    from workbench.cli import main

    p = tmp_path / "odd.gguf"
    p.write_bytes(build(KVS + [("evil\x1b[2J", STRING, "v\x1b[31m")],
                        tensors=TENSORS[:3] + [("t\x1b[0m", *TENSORS[3][1:])])[0])
    assert main(["inspect", str(p), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["metadata"]["a.arr_arr"] == [[1, 2], ["z"]] and d["metadata"]["evil\x1b[2J"] == "v\x1b[31m"
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "a.arr_arr = [[1, 2], [\"z\"]]" in out and "\x1b" not in out
    assert "'evil\\x1b[2J'" in out and "'t\\x1b[0m'" in out
