"""Load strategies: same bytes whichever way the file is loaded; reports that add up."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from workbench.loading import STRATEGIES, load_file


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("threads", [1, 3])
def test_every_strategy_gives_the_same_tensors(smollm2_path, smollm2, strategy, threads):
    g, rep = load_file(smollm2_path, strategy, threads)
    try:
        assert rep.strategy == strategy and rep.seconds > 0 and rep.samples
        ref = smollm2.gguf.tensors
        assert set(g.tensors) == set(ref)
        for name in ("token_embd.weight", "blk.7.ffn_down.weight", "output_norm.weight"):
            np.testing.assert_array_equal(g.tensors[name].data, ref[name].data)
        if strategy in ("read", "mmap+touch"):
            # one timeline row per tensor, covering every byte of tensor data
            assert len(rep.tensors) == len(ref)
            assert sum(t["bytes"] for t in rep.tensors) == sum(t.nbytes for t in ref.values())
            assert all(0 <= t["start"] <= t["end"] <= rep.seconds for t in rep.tensors)
            assert len({t["thread"] for t in rep.tensors}) <= threads
        if strategy == "read":
            assert rep.samples[-1]["rss_anon"] >= g.file_size  # the copy lives in anonymous memory
    finally:
        g.close()


def test_bad_strategy_and_threads(smollm2_path):
    with pytest.raises(ValueError, match="unknown load strategy 'fast'"):
        load_file(smollm2_path, "fast")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        load_file(smollm2_path, "read", 0)


def test_load_trial_cold_in_a_fresh_process(smollm2_path, tmp_path):
    # a private copy: pages of a file that another process (this one) maps stay cached
    copy = tmp_path / "m.gguf"
    shutil.copy(smollm2_path, copy)
    r = subprocess.run([sys.executable, "-m", "workbench", "load-trial", str(copy), "--strategy", "mmap",
                        "--cold"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["cold"] and d["first_token_seconds"] >= d["seconds"] > 0
    # evicted: at the start only the header's readahead window can be cached
    assert d["cached_after_evict"] == 0
    assert d["samples"][0]["cached_bytes"] < d["file_bytes"]
