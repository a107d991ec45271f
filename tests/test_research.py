"""Research features: activation capture, the sparse-loading simulator, synthetic big-shape files.

Checked against exact computation: a manual numpy forward of the tiny model (its dense
weights from `tiny_llama`) for the captured activations and for the skipped-neuron logits;
an independent byte-mask count for the I/O accounting; the analytically expected one-token
touch map of a small synthetic file; the 7B layout as the workbench's own GGUF parser reads
it (from a sparse file: nothing big is written).
"""

import os

import numpy as np
import pytest

import workbench
from workbench.instrument import analysis
from workbench.instrument.residency import PAGE
from workbench.profile import tensor_table
from workbench.research import activations as A
from workbench.research import sparse_loading as S
from workbench.research import synthetic as Y
from workbench.synth import tiny_llama

@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """These tests run many small matmuls; on a busy 2-core machine OpenBLAS's second thread
    turns a 0.2 ms matmul into 5-10 ms of spin-waiting. One BLAS thread here (restored after)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional (the `peer` extra): run with the default threads
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


TINY = dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random llama (Q8_0), its dense weights, and the loaded model."""
    p = tmp_path_factory.mktemp("research") / "tiny.gguf"
    dense = tiny_llama(p, **TINY)
    m = workbench.load(p)
    yield m, dense
    m.close()


def manual_forward(w, ids, mask_fn=None, n_layer=2, H=4, Hkv=2, eps=1e-5, base=10000.0):
    """A plain float64 transcription of the llama graph. Returns (logits (n, vocab), the FFN
    activations per layer (n, n_ff)). mask_fn(L, a) -> bool (n, n_ff): the neurons used; the
    down projection then sums only over them, row by row."""
    x = w["token_embd.weight"][ids].astype(np.float64)
    n, d = x.shape
    hd = d // H
    pos = np.arange(n)

    def norm(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * g

    def rope(t):  # NORM mode: rotate adjacent pairs
        ang = pos[:, None] * base ** (-np.arange(0, hd, 2) / hd)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
        return out

    acts = []
    for L in range(n_layer):
        p = f"blk.{L}."
        h = norm(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(n, H, hd))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(n, Hkv, hd))
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, Hkv, hd)
        att = np.zeros((n, H, hd))
        for hh in range(H):
            kv = hh // (H // Hkv)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(hd)
            s[np.triu_indices(n, 1)] = -np.inf
            pr = np.exp(s - s.max(axis=1, keepdims=True))
            att[:, hh] = (pr / pr.sum(axis=1, keepdims=True)) @ v[:, kv]
        x = x + att.reshape(n, -1) @ w[p + "attn_output.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        a = g / (1 + np.exp(-g)) * u
        acts.append(a)
        keep = np.ones(a.shape, bool) if mask_fn is None else mask_fn(L, a)
        down = w[p + "ffn_down.weight"]
        x = x + np.stack([a[i, keep[i]] @ down[:, keep[i]].T for i in range(n)])
    logits = norm(x, w["output_norm.weight"]) @ w["token_embd.weight"].T  # tied output
    return logits, acts


IDS = [70, 101, 108, 108, 111, 33]


# ---- activation capture -------------------------------------------------------------------------


def test_capture_equals_manual_recomputation_and_changes_nothing(tiny):
    m, w = tiny
    plain = m.forward(m.new_state(16), IDS[:4], all_logits=True)
    with A.capture_ffn(m) as cap:
        state = m.new_state(16)
        l1 = m.forward(state, IDS[:4], all_logits=True)  # prefill of 4
        m.forward(state, IDS[4:5])  # two decode steps
        m.forward(state, IDS[5:6])
    assert "silu_mul" not in vars(m.ops) and "gelu_mul" not in vars(m.ops)  # restored
    np.testing.assert_array_equal(l1, plain)  # observing changes nothing, bit for bit
    acts = cap.result(IDS)
    assert acts.values.shape == (2, 6, 96) and acts.layers == [0, 1] and acts.kind == "silu_mul"
    assert acts.pos.tolist() == list(range(6)) and acts.seq.tolist() == [0] * 6
    _, ref = manual_forward(w, IDS)
    for L in range(2):
        np.testing.assert_allclose(acts.layer(L), ref[L], rtol=2e-4, atol=2e-5)


def test_capture_layers_sequences_and_gelu(tiny):
    m, _ = tiny
    with A.capture_ffn(m, layers=[1]) as cap:
        for ids in (IDS[:3], IDS[:2]):
            m.forward(m.new_state(8), ids)
    acts = cap.result()
    assert acts.layers == [1] and acts.seq.tolist() == [0, 0, 0, 1, 1] and acts.pos.tolist() == [0, 1, 2, 0, 1]
    # gemma3's GeGLU goes through ops.gelu_mul: the same hook sees it, layer from ops.layer
    g, u = np.random.default_rng(0).standard_normal((2, 3, 96)).astype(np.float32)
    with A.capture_ffn(m) as cap:
        m.ops.layer = 5
        out = m.ops.gelu_mul(g, u)
        m.ops.layer = None
    assert cap.kind == "gelu_mul"
    np.testing.assert_array_equal(cap.result().layer(5), out)
    # hooks nest and unwind in order
    with A.capture_ffn(m) as outer, A.capture_ffn(m) as inner:
        m.forward(m.new_state(4), IDS[:2])
    assert len(outer.calls) == len(inner.calls) == 2 and "silu_mul" not in vars(m.ops)


def test_statistics_against_hand_counts():
    v = np.array([[[0.0, 0.5, -2.0, 0.01],  # layer 0: 4 tokens, 4 neurons
                   [0.2, -0.05, 3.0, 0.0],
                   [0.3, 0.0, 0.0, 1.0],
                   [-0.4, 0.6, 0.02, 0.0]]], np.float32)
    acts = A.Activations(v, [0], seq=np.array([0, 0, 0, 1]), pos=np.array([0, 1, 2, 0]), ids=np.full(4, -1))
    t = 0.1
    np.testing.assert_allclose(A.near_zero_fraction(acts, t), [[0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(A.neuron_frequency(acts, t=t), [[0.75, 0.5, 0.5, 0.25]])
    # Jaccard with the previous token; token 3 starts a new sequence
    st = A.stability(acts, t=t)
    np.testing.assert_allclose(st[0, 1:3], [1 / 3, 1 / 3])
    assert np.isnan(st[0, 0]) and np.isnan(st[0, 3])
    top = A.active_sets(acts, top_k=1)
    assert top.sum() == 4 and top[0, 0, 2] and top[0, 2, 3] and top[0, 3, 1]
    assert A.active_sets(acts, t=0.5, relative=True)[0, 0].tolist() == [False, False, True, False]
    hc = A.hot_cold(acts, t=t, hot=0.7, cold=0.25, coverage=0.5)[0]
    assert (hc["n_hot"], hc["n_cold"], hc["n_never"]) == (1, 1, 0)
    assert hc["neurons_for_0.5"] == 2 and hc["hot_share"] == pytest.approx(0.75 / 2.0)
    d = A.distribution(acts)
    np.testing.assert_allclose(d["quantiles"][0], np.quantile(np.abs(v), A.DEFAULT_QUANTILES))
    assert d["zero_fraction"][0] == pytest.approx(5 / 16) and d["hist"].sum() + d["below"][0] == 16


def test_collect_on_smollm2(smollm2):
    acts = A.collect(smollm2, ["The capital of France is", "Hi"], n_generate=2)
    n1 = len(smollm2.tokenizer.encode("The capital of France is")) + 2
    n2 = len(smollm2.tokenizer.encode("Hi")) + 2
    assert acts.values.shape == (30, n1 + n2, 1536) and acts.seq.tolist() == [0] * n1 + [1] * n2
    assert np.isfinite(acts.values).all()
    nz = A.near_zero_fraction(acts, 0.01)
    assert nz.shape == (30, n1 + n2) and 0 < nz.mean() < 1
    st = A.stability(acts, t=0.05)
    assert np.isnan(st[:, 0]).all() and np.isnan(st[:, n1]).all() and np.isfinite(st[:, 1:n1]).all()
    rows = A.summary(acts, 0.05, top_k=100)
    assert len(rows) == 30 and all(0 <= r["jaccard_topk"] <= 1 for r in rows)


# ---- sparse-loading simulator -----------------------------------------------------------------------


def test_threshold_zero_and_dense_policies_are_bit_identical(smollm2):
    ids = smollm2.tokenizer.encode("The capital of France is")
    dense = smollm2.forward(smollm2.new_state(16), ids, all_logits=True)
    for policy in (S.Threshold(0.0), S.Dense(), S.Window(2, 0.0)):
        with S.sparse_ffn(smollm2, policy) as hook:
            sparse = smollm2.forward(smollm2.new_state(16), ids, all_logits=True)
        assert np.array_equal(sparse, dense), policy
        assert hook.skipped == 0
    assert "silu_mul" not in vars(smollm2.ops)


POLICIES = {"threshold": lambda t: S.Threshold(t), "window": lambda t: S.Window(2, t),
            "window+current": lambda t: S.Window(1, t, predict_current=True)}


@pytest.mark.parametrize("kind", list(POLICIES))
def test_skipped_neurons_match_exact_computation(tiny, kind):
    """The simulator's logits equal a manual forward whose ffn_down sums only over the
    neurons the policy uses (chosen independently from the manual activations)."""
    m, w = tiny

    def run_manual(policy):
        hist = {}

        def mask_fn(L, a):
            act = np.abs(a) >= policy.t
            if isinstance(policy, S.Threshold):
                keep = act
            else:  # window: the previous k tokens' active sets; the first token runs dense
                keep = np.ones(a.shape, bool)
                for i in range(1, len(a)):
                    keep[i] = act[max(0, i - policy.k):i].any(axis=0) | (act[i] if policy.predict_current else False)
            hist[L] = (a, keep)
            return keep

        logits, _ = manual_forward(w, IDS, mask_fn)
        return logits, hist, min(np.abs(np.abs(a) - policy.t).min() for a, _ in hist.values())

    # a threshold with no activation so close to it that f32 rounding could flip its side
    for t in np.linspace(0.04, 0.12, 17):
        policy = POLICIES[kind](float(t))
        ref_logits, hist, margin = run_manual(policy)
        if margin > 1e-4:
            break
    assert margin > 1e-4
    with S.sparse_ffn(m, policy) as hook:
        logits = m.forward(m.new_state(16), IDS, all_logits=True)
    layers, used, _, _ = hook.used()
    for L in layers:
        np.testing.assert_array_equal(used[L], hist[L][1])
    assert 0 < hook.skipped == sum((~k).sum() for _, k in hist.values())
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-3, atol=2e-4)
    dense_logits, _ = manual_forward(w, IDS)
    assert np.abs(ref_logits - dense_logits).max() > 1e-2  # the skipping really changed the result


def _byte_mask_pages(t, mark) -> tuple[int, np.ndarray]:
    """(bytes, absolute page ids) of a tensor's bytes marked by mark(mask2d) on its (rows, row_bytes) view."""
    mask = np.zeros((t.rows, t.row_bytes), bool)
    mark(mask)
    return int(mask.sum()), np.unique((t.offset + np.flatnonzero(mask.ravel())) // PAGE)


def test_io_accounting_against_an_independent_count(smollm2):
    geo = S.FFNGeometry.of(smollm2, 7)
    gate, up, down = geo.gate, geo.up, geo.down
    assert (gate.qtype.name, gate.row_bytes, down.rows, down.cols) == ("Q4_1", 360, 576, 1536)
    rng = np.random.default_rng(1)
    used = rng.random(1536) < 0.4
    used[64:128] = False  # two whole 32-neuron column blocks skipped
    used[200] = True
    r = geo.account(used)
    skipped = int((~used).sum())
    dense = geo.account(np.ones(1536, bool))
    # gate / up: bytes saved = rows skipped x row bytes
    assert dense["gate_bytes"] - r["gate_bytes"] == skipped * 360 == dense["up_bytes"] - r["up_bytes"]
    assert dense["gate_bytes"] == gate.nbytes and dense["down_bytes"] == down.nbytes
    # ffn_down: a neuron's column shares each 20-byte Q4_1 block with 31 neighbours
    ts, bs = down.qtype.type_size, down.qtype.block_size

    def mark_down(mask):
        for j in np.flatnonzero(used):
            mask[:, (j // bs) * ts:(j // bs + 1) * ts] = True

    down_bytes, down_pages = _byte_mask_pages(down, mark_down)
    assert r["down_bytes"] == down_bytes
    blocks_used = sum(used[b * 32:(b + 1) * 32].any() for b in range(48))
    assert blocks_used == 46 and down_bytes == 46 * 20 * 576
    # pages of the real file layout
    rows_marker = lambda mask: mask.__setitem__(used, True)
    gb, gate_pages = _byte_mask_pages(gate, rows_marker)
    ub, up_pages = _byte_mask_pages(up, rows_marker)
    assert gb == r["gate_bytes"] and ub == r["up_bytes"]
    np.testing.assert_array_equal(r["gguf_pages"], np.union1d(np.union1d(gate_pages, up_pages), down_pages))
    # bundles: gate row + up row + down column re-quantized as a row of 576 weights, back to back
    assert geo.bundle_bytes == 360 + 360 + 360 and r["bundle_bytes"] == used.sum() * 1080
    bundle_mask = np.zeros(1536 * 1080, bool)
    for j in np.flatnonzero(used):
        bundle_mask[j * 1080:(j + 1) * 1080] = True
    np.testing.assert_array_equal(r["bundle_pages"], np.unique(np.flatnonzero(bundle_mask) // PAGE))
    # "new" between two tokens: neurons used now and not before, blocks likewise, pages likewise
    used2 = used.copy()
    used2[64:70] = True  # re-opens one column block
    used2[300:400] = ~used[300:400]
    rep = S.account(smollm2, np.stack([used, used2])[None], [7])
    fresh = used2 & ~used
    assert rep.new["neurons"][1, 0] == fresh.sum() and rep.new["gate_bytes"][1, 0] == fresh.sum() * 360
    assert rep.new["down_bytes"][1, 0] == 1 * 20 * 576
    assert rep.new["gguf_page_bytes"][1, 0] == len(np.setdiff1d(geo.account(used2)["gguf_pages"], r["gguf_pages"])) * PAGE
    assert rep.read["gguf_bytes"][0, 0] == r["gate_bytes"] + r["up_bytes"] + r["down_bytes"]
    assert rep.new["gguf_bytes"][0, 0] == rep.read["gguf_bytes"][0, 0]  # the first token loads its whole set


def test_simulate_on_smollm2(smollm2):
    ref = S.dense_reference(smollm2, "The capital of France is", n_steps=3)
    assert len(ref.greedy) == 3 and ref.logits.shape == (len(ref.ids), 49152)
    res = S.simulate(smollm2, S.Threshold(0.01), ref)
    s = res.summary()
    assert 0.5 < s["neurons_used"] < 1 and s["kl_mean"] < 0.05 and s["top1"] >= 0.75
    # every token and layer: gate/up bytes are exactly the used rows; ffn_down is block-granular
    io = res.io
    n_used = io.read["neurons"]
    assert np.array_equal(n_used, np.round(res.used_fraction.T * 1536).astype(int))
    assert np.array_equal(io.read["gate_bytes"], n_used * 360) and np.array_equal(io.read["up_bytes"], n_used * 360)
    assert (io.read["down_bytes"] <= io.dense["down_bytes"]).all() and io.dense["down_bytes"].sum() == 30 * 552_960
    assert s["gate_up_bytes"] == pytest.approx(s["neurons_used"]) and s["down_bytes"] > s["gate_up_bytes"]
    assert s["gguf_pages"] >= s["gguf_bytes"] - 1e-9 and s["bundle_pages"] >= s["bundle_bytes"] - 1e-9
    rows = S.sweep(smollm2, ref.prompt_ids, [S.Threshold(0.0)], n_steps=2)
    assert rows[0]["kl_max"] == 0.0 and rows[0]["greedy_same"] == 2 and rows[0]["gguf_bytes"] == 1.0


# ---- synthetic files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_small_synthetic_file_one_token_touch(tmp_path, tied):
    shape = Y.small_shape(n_layer=2, n_embd=256, tied=tied)
    p = tmp_path / "small.gguf"
    lay = Y.write(p, shape, "Q4_0", chunk_bytes=4096)  # many chunks per tensor
    assert os.listdir(tmp_path) == ["small.gguf"] and p.stat().st_size == lay.file_bytes
    m = workbench.load(p)
    try:
        assert m.gguf.get("general.name").startswith("SYNTHETIC")
        assert (m.config.n_layer, m.config.n_embd, m.config.n_ff, m.config.n_vocab) == (2, 256, 704, 512)
        for t in lay.tensors:
            g = m.gguf.tensors[t.name]
            assert (g.offset, g.nbytes, g.qtype.name, g.shape) == (t.offset, t.nbytes, t.type, t.shape)
        assert ("output.weight" in m.gguf.tensors) is not tied
        w = m.weights.blocks[0].ffn_gate.dequantize()
        assert np.isfinite(w).all() and 0.5 / 16 < w.std() < 2 / 16  # ~ 1/sqrt(256)
        ids = m.tokenizer.encode("Hi")
        assert len(ids) == 2 and m.tokenizer.decode(ids) == "Hi"
        with workbench.record(m) as rec:
            logits = m.forward(m.new_state(4), ids[:1])
        assert np.isfinite(logits).all()
        touch = {r["tensor"]: r["touched_bytes"]
                 for r in analysis.logical_touch([e.to_dict() for e in rec.events], tensor_table(m))}
        expected = Y.expected_one_token_touch(lay)
        assert touch == expected
        emb = lay.by_name()["token_embd.weight"]
        assert expected["token_embd.weight"] == (emb.nbytes if tied else 256 // 32 * 18)
        assert sum(expected.values()) == lay.tensor_bytes - (0 if tied else emb.nbytes - emb.row_bytes)
    finally:
        m.close()


def test_writer_rejects_bad_input_without_leaving_files(tmp_path):
    with pytest.raises(ValueError):
        Y.write(tmp_path / "x.gguf", Y.small_shape(), "Q4_K")
    with pytest.raises(ValueError):
        Y.write(tmp_path / "x.gguf", Y.small_shape(n_vocab=100), "Q4_0")
    with pytest.raises(KeyError):
        Y.plan("llama-70b")
    assert os.listdir(tmp_path) == []


def test_7b_layout_dry_run(tmp_path):
    lay = Y.plan("llama-7b", "Q4_0")
    t = lay.by_name()
    assert len(lay.tensors) == 1 + 32 * 9 + 2
    q4 = lambda rows, cols: rows * cols // 32 * 18
    assert (t["token_embd.weight"].shape, t["token_embd.weight"].nbytes) == ((32000, 4096), q4(32000, 4096))
    assert (t["output.weight"].shape, t["output.weight"].type) == ((32000, 4096), "Q4_0")
    for i in (0, 31):
        p = f"blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            assert (t[p + name + ".weight"].shape, t[p + name + ".weight"].nbytes) == ((4096, 4096), 9_437_184)
        assert t[p + "ffn_gate.weight"].shape == t[p + "ffn_up.weight"].shape == (11008, 4096)
        assert t[p + "ffn_down.weight"].shape == (4096, 11008)
        assert t[p + "ffn_down.weight"].nbytes == q4(4096, 11008) == 25_362_432
        assert t[p + "ffn_down.weight"].row_bytes == 6192 and t[p + "ffn_up.weight"].row_bytes == 2304
        assert (t[p + "attn_norm.weight"].type, t[p + "attn_norm.weight"].nbytes) == ("F32", 16384)
    weights = 2 * 32000 * 4096 + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert lay.tensor_bytes == weights // 32 * 18 + 65 * 4096 * 4
    assert 3.75e9 < lay.file_bytes < 3.85e9 and lay.file_bytes - lay.tensor_bytes < 2e6
    offs = [e.offset for e in lay.tensors]
    assert offs[0] == lay.data_offset and all(o % 32 == 0 for o in offs)
    assert all(a.offset + a.nbytes <= b.offset for a, b in zip(lay.tensors, lay.tensors[1:]))
    assert lay.metadata["general.name"].startswith("SYNTHETIC") and len(lay.metadata["tokenizer.ggml.tokens"]) == 32000
    # the header as the workbench's own parser reads it: a sparse file of the full size (no disk used)
    p = tmp_path / "7b-header-only.gguf"
    with open(p, "wb") as f:
        f.write(lay.header)
        f.truncate(lay.file_bytes)
    g = workbench.open_gguf(p)
    try:
        assert len(g.tensors) == len(lay.tensors)
        for e in lay.tensors:
            gt = g.tensors[e.name]
            assert (gt.offset, gt.nbytes, gt.qtype.name, gt.shape) == (e.offset, e.nbytes, e.type, e.shape)
        from workbench.config import Config

        c = Config.from_gguf(g)
        assert (c.n_layer, c.n_embd, c.n_head, c.n_ff, c.n_vocab) == (32, 4096, 32, 11008, 32000)
    finally:
        g.close()


def test_measurement_helpers_on_a_small_file(tmp_path):
    """The helpers used for the 7B numbers, on a small file: the recorded touch map of one
    decode step is the expected one, and faulting in exactly its pages (cold, MADV_RANDOM)
    maps exactly those pages."""
    p = tmp_path / "small.gguf"
    lay = Y.write(p, Y.small_shape(), "Q4_0")
    r = Y.measure_tokens(p, n_tokens=2, cold=True, token=65)
    assert r["file_bytes"] == lay.file_bytes and len(r["tokens"]) == 2
    expected = Y.expected_one_token_touch(lay)
    for tok in r["tokens"]:
        assert tok["per_tensor_logical"] == expected and tok["logical_bytes"] == sum(expected.values())
        assert tok["finite_logits"] and tok["mapped_bytes"] >= tok["logical_page_bytes"] >= tok["logical_bytes"]
    tmap = r["tokens"][1]["touch_map"]
    assert len(tmap["token_embd.weight"]) == 1 and len(tmap) == len(lay.tensors)
    assert all(v is None for k, v in tmap.items() if k != "token_embd.weight")
    t = Y.touch_pages(p, tmap, cold=True, madvise="random")
    # the union of the pages (tensors 32-byte aligned share boundary pages, which the
    # per-tensor sum in logical_page_bytes counts once per tensor)
    row = tmap["token_embd.weight"][0]
    emb = lay.by_name()["token_embd.weight"]
    pages = {(emb.offset + row * emb.row_bytes) // PAGE, (emb.offset + (row + 1) * emb.row_bytes - 1) // PAGE}
    for e in lay.tensors[1:]:
        pages |= set(range(e.offset // PAGE, (e.offset + e.nbytes - 1) // PAGE + 1))
    assert t["pages"] == len(pages) and t["page_bytes"] <= r["tokens"][1]["logical_page_bytes"]
    assert t["newly_mapped_bytes"] == t["page_bytes"]  # no readahead, no fault-around: exact
    w = Y.read_whole_file(p, cold=False)
    assert w["bytes"] == lay.file_bytes
