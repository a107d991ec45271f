"""numpy's float32 weight cache kept in a file (workbench.f32_store): built once, then mapped;
the same numbers as the cache built in memory; stale, corrupt or unwritable stores never
give wrong weights."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import workbench
from kernels.qtypes import dequantize
from workbench import f32_store
from workbench.synth import tiny_llama


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    d = tmp_path / "store"
    monkeypatch.setenv("WORKBENCH_F32_STORE", str(d))
    return d


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.gguf"
    tiny_llama(p, n_embd=64, n_ff=96)
    return p


def cached(m) -> dict[str, np.ndarray]:
    be = m.ops.backend
    return {w.name: np.array(be._cache[id(w)]) for w in m.weights.tensors()}


def logits(m):
    return m.forward(m.new_state(8), [3, 5, 7])


def test_first_load_writes_the_store_and_later_loads_map_it(model_path, store_dir):
    m1 = workbench.load(model_path, weight_cache="f32")
    files = list(store_dir.glob("*.f32"))
    assert len(files) == 1 and m1.ops.backend.store.path == files[0]
    info = m1.ops.backend.cache_info()
    assert info["store"] == {"path": str(files[0]), "built_now": True, "bytes": files[0].stat().st_size}
    assert info["bytes"] == sum(w.rows * w.cols * 4 for w in m1.weights.tensors())
    first, out1 = cached(m1), logits(m1)
    m1.close()
    m2 = workbench.load(model_path, weight_cache="f32")
    try:
        be = m2.ops.backend
        assert be.store.path == files[0] and list(store_dir.glob("*.f32")) == files
        for w in m2.weights.tensors():
            a = be._cache[id(w)]
            if w.qtype.name != "F32":  # mapped, read-only, and each equals its dequantization
                assert not a.flags.writeable
                np.testing.assert_array_equal(a, dequantize(w.data, w.qtype))
            np.testing.assert_array_equal(a, first[w.name])
        np.testing.assert_array_equal(logits(m2), out1)
        assert be.cache_info()["store"]["built_now"] is False
        from workbench.profile import run_profile

        text = run_profile(m2, "ab", n=1, residency=False).summary_text()
        assert f"float32 weight cache mapped from {files[0].name} (in the f32 store)" in text
        assert "Fused ops (numpy: " in text  # run one at a time while recording, and the summary says so
        plain = workbench.load(model_path)  # no f32 cache: nothing to fuse, nothing said
        assert "Fused ops" not in run_profile(plain, "ab", n=1, residency=False).summary_text()
        plain.close()
        memory = workbench.load(model_path, weight_cache="f32", f32_store=False)
        assert memory.ops.backend.store is None and memory.ops.backend.cache_info()["store"] == "memory"
        np.testing.assert_array_equal(logits(memory), out1)
        memory.close()
    finally:
        m2.close()


def test_a_changed_model_file_gets_a_new_store_and_the_stale_one_goes(model_path, store_dir, tmp_path):
    workbench.load(model_path, weight_cache="f32").close()
    (old,) = store_dir.glob("*.f32")
    tiny_llama(model_path, n_embd=64, n_ff=96, seed=1)  # other weights, same path
    st = os.stat(model_path)
    os.utime(model_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    m = workbench.load(model_path, weight_cache="f32")
    try:
        (new,) = store_dir.glob("*.f32")
        assert new != old
        for w in m.weights.tensors():
            if w.qtype.name != "F32":
                np.testing.assert_array_equal(m.ops.backend._cache[id(w)], dequantize(w.data, w.qtype))
    finally:
        m.close()


@pytest.mark.parametrize("damage", ["truncate", "garbage header", "zero header length", "other key", "other shape",
                                    "offset outside", "source not an object", "deep nesting"])
def test_a_damaged_store_is_ignored_and_rebuilt(model_path, store_dir, damage):
    workbench.load(model_path, weight_cache="f32").close()
    (path,) = store_dir.glob("*.f32")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage header":
        data[20:60] = b"\xff" * 40
    elif damage == "zero header length":
        data[8:16] = bytes(8)
    elif damage == "other key":
        i = data.index(b'"key": "') + 8
        data[i : i + 4] = b"dead"
    elif damage == "other shape":  # same length of header: the first array claims 1 more row
        i = data.index(b'"shape": [') + 10
        j = data.index(b",", i)
        data[i:j] = str(int(data[i:j]) + 1).rjust(j - i).encode()
    elif damage == "source not an object":  # a header that is JSON but not ours
        blob = b'{"source": "x", "key": 1}'
        data[8:16] = len(blob).to_bytes(8, "little")
        data[16 : 16 + len(blob)] = blob
    elif damage == "deep nesting":
        blob = b"[" * 100_000
        data[8:16] = len(blob).to_bytes(8, "little")
        data[16 : 16 + len(blob)] = blob
    else:
        i = data.index(b'"offset": ') + 10
        j = data.index(b",", i) if data.index(b",", i) < data.index(b"}", i) else data.index(b"}", i)
        data[i:j] = b"9" * (j - i)
    path.write_bytes(bytes(data))
    m = workbench.load(model_path, weight_cache="f32")
    try:
        for w in m.weights.tensors():
            if w.qtype.name != "F32":
                np.testing.assert_array_equal(m.ops.backend._cache[id(w)], dequantize(w.data, w.qtype))
        assert m.ops.backend.store.path == path and path.stat().st_size > len(data) // 2
    finally:
        m.close()


def test_an_unwritable_store_warns_and_keeps_the_cache_in_memory(model_path, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store directory should be")
    monkeypatch.setenv("WORKBENCH_F32_STORE", str(blocker))
    with pytest.warns(RuntimeWarning, match="could not be saved"):
        m = workbench.load(model_path, weight_cache="f32")
    try:
        for w in m.weights.tensors():
            if w.qtype.name != "F32":
                np.testing.assert_array_equal(m.ops.backend._cache[id(w)], dequantize(w.data, w.qtype))
    finally:
        m.close()


def test_the_store_can_be_turned_off(model_path, store_dir, monkeypatch):
    monkeypatch.setenv("WORKBENCH_F32_STORE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = workbench.load(model_path, weight_cache="f32")
    m.close()
    assert m.ops.backend.store is None and not store_dir.exists()


def test_stores_of_gone_models_and_the_least_recently_used_are_evicted(tmp_path, store_dir, monkeypatch):
    paths = []
    for i in range(3):
        p = tmp_path / f"m{i}.gguf"
        tiny_llama(p, n_embd=64, n_ff=96, seed=i)
        paths.append(p)
    workbench.load(paths[0], weight_cache="f32").close()
    workbench.load(paths[1], weight_cache="f32").close()
    size = max(f.stat().st_size for f in store_dir.glob("*.f32"))
    assert len(f32_store.files_for(paths[0])) == 1 and len(f32_store.files_for(paths[1])) == 1
    os.utime(f32_store.files_for(paths[0])[0], (1, 1))  # m0's store: the least recently used
    monkeypatch.setenv("WORKBENCH_F32_STORE_MAX", str(2 * size + size // 2))
    workbench.load(paths[2], weight_cache="f32").close()  # room for two: m0's goes
    assert f32_store.files_for(paths[0]) == [] and len(f32_store.files_for(paths[1])) == 1
    paths[1].unlink()  # a model that is gone: its store goes with the next save
    workbench.load(paths[0], weight_cache="f32").close()
    assert sorted(p.name for p in store_dir.glob("*.f32")) == sorted(
        f.name for f in f32_store.files_for(paths[0]) + f32_store.files_for(paths[2]))


def test_cache_command_lists_and_clears_the_stores(model_path, store_dir, capsys, tmp_path, monkeypatch):
    import json

    from workbench.cli import main

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "models"))
    workbench.load(model_path, weight_cache="f32").close()
    (store,) = store_dir.glob("*.f32")
    assert main(["cache", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["f32_store_dir"] == str(store_dir) and report["models"] == []
    (row,) = report["f32_stores"]
    assert row["path"] == str(store) and row["bytes"] == store.stat().st_size
    assert row["source"] == os.path.realpath(model_path) and row["source_exists"]
    assert main(["cache"]) == 0 and store.name in capsys.readouterr().out
    assert main(["cache", "--clear-f32"]) == 0
    assert "removed 1 float32 weight stores" in capsys.readouterr().out and not store.exists()


def test_a_full_disk_warns_and_keeps_the_cache_in_memory(model_path, store_dir, monkeypatch):
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.warns(RuntimeWarning, match="No space left"):
        m = workbench.load(model_path, weight_cache="f32")
    try:
        assert m.ops.backend.cache_info()["store"] == "memory" and not list(store_dir.glob("*.f32"))
        assert not [p for p in store_dir.iterdir()]  # no temporary left behind
        for w in m.weights.tensors():
            if w.qtype.name != "F32":
                np.testing.assert_array_equal(m.ops.backend._cache[id(w)], dequantize(w.data, w.qtype))
    finally:
        m.close()
