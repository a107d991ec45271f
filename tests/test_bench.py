"""The benchmark's own arithmetic: FLOPs of a prompt pass counted independently, the GEMM
peak and load-to-first-token trials, and a whole (tiny, peerless) run's report."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.bench import first_token_trial, gemm_peak, prompt_flops, run_bench


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from workbench.synth import tiny_llama

    p = tmp_path_factory.mktemp("bench") / "tiny.gguf"
    dense = tiny_llama(p, n_layer=3, n_embd=64, n_head=4, n_head_kv=2, n_ff=96)
    return p, dense


def test_prompt_flops_counts_every_matmul_and_attention(tiny):
    path, dense = tiny
    n = 10
    layer_params = sum(a.size for k, a in dense.items() if k.startswith("blk.") and a.ndim == 2)
    assert layer_params == 3 * (64 * 64 * 2 + 32 * 64 * 2 + 96 * 64 * 3)  # q o, k v, gate up down
    out = dense.get("output.weight", dense["token_embd.weight"])
    attention = 3 * 4 * 4 * 16 * n * (n + 1) // 2  # layers x (qk + pv: 2 FLOPs each) x heads x head dim x pairs
    assert prompt_flops(str(path), [n]) == {n: 2 * layer_params * n + attention + 2 * out.size}


def test_gemm_peak_is_a_rate():
    small = gemm_peak(n=128, repeat=3)
    assert small["n"] == 128 and 0.1 < small["GFLOPs"] < 1e5


def test_first_token_trial(tiny):
    path, _ = tiny
    warm = first_token_trial(str(path), "numpy", "f32")
    assert 0 < warm["load_seconds"] < warm["first_token_seconds"] < 60
    assert warm["rss"]["peak"] >= warm["rss"]["total"] > 0 and warm["cached_after_evict"] is None
    cold = first_token_trial(str(path), "numpy", "none", cold=True)
    assert isinstance(cold["cached_after_evict"], int)
    from workbench.f32_store import files_for

    assert len(files_for(path)) == 1  # the f32 trial wrote numpy's stored cache; a cold one evicts it too
    cold = first_token_trial(str(path), "numpy", "f32", cold=True)
    assert isinstance(cold["cached_after_evict"], int)


def test_run_bench_report(tiny, tmp_path):
    path, _ = tiny
    out = tmp_path / "bench.json"
    r = run_bench(str(path), ["numpy"], peer=None, repeat=2, pp=(8,), tg=(4,), out=str(out), load="both",
                  log=lambda s: None)
    e = r["engines"]["numpy+f32-cache"]
    pp, tg = e["workloads"]["pp8"], e["workloads"]["tg4"]
    assert pp["runs"] == tg["runs"] == 2 and pp["min_tps"] <= pp["median_tps"] <= pp["max_tps"]
    assert np.isclose(pp["GFLOPs"], r["prompt_flops"][8] * pp["median_tps"] / 8 / 1e9)
    assert np.isclose(pp["fraction_of_gemm_peak"], pp["GFLOPs"] / r["gemm_peak"]["GFLOPs"])
    assert np.isclose(tg["fraction_of_bound"], tg["median_tps"] * e["bytes_per_token"] / (r["bandwidth"]["read_GBps"] * 1e9))
    # the limits are measured before and after the workloads; the bound is the better of the two
    assert len(r["bandwidth"]["read_GBps_measured"]) == len(r["gemm_peak"]["GFLOPs_measured"]) == 2
    assert r["bandwidth"]["read_GBps"] == max(r["bandwidth"]["read_GBps_measured"])
    assert r["gemm_peak"]["GFLOPs"] == max(r["gemm_peak"]["GFLOPs_measured"])
    assert "before / after" in r["markdown"]
    ft = e["first_token"]
    assert ft["warm"]["runs"] == ft["cold"]["runs"] == 2
    assert ft["warm"]["min_s"] <= ft["warm"]["median_s"] <= ft["warm"]["max_s"]
    assert "Load to first token" in r["markdown"] and "| numpy+f32-cache | pp8 |" in r["markdown"]
    assert out.exists()
