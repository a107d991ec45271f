"""Model fetching: registry, verification, a corrupt cache refetched, local paths."""

import shutil

import pytest

from workbench.models import REGISTRY, FetchError, fetch, resolve


def test_corrupt_cache_is_detected_and_refetched(tmp_path, monkeypatch, smollm2_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    m = REGISTRY["smollm2"]
    bad = tmp_path / m.file
    with open(smollm2_path, "rb") as src:
        bad.write_bytes(src.read(1 << 20))  # a partial download
    p = fetch("smollm2", quiet=True)
    assert p == bad and p.stat().st_size == m.size
    # same size, one flipped byte: the checksum catches it
    data = bytearray(p.read_bytes())
    data[12345] ^= 0xFF
    p.write_bytes(bytes(data))
    p = fetch("smollm2", quiet=True)
    assert p.read_bytes()[12345] != data[12345]
    assert not list(tmp_path.glob(".fetch-*")) and not list(tmp_path.glob("*.tmp"))


def test_verified_cache_is_reused_without_download(tmp_path, monkeypatch, smollm2_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    shutil.copy(smollm2_path, tmp_path / REGISTRY["smollm2"].file)
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("downloaded again"))
    assert fetch("smollm2").stat().st_size == REGISTRY["smollm2"].size


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(FetchError, match="known models: gemma3, smollm2"):
        fetch("llama-70b")
    with pytest.raises(FetchError, match="no such file"):
        resolve(tmp_path / "missing.gguf")
    with pytest.raises(FetchError, match="not a file"):
        resolve(tmp_path)
