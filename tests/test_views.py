"""Views: every plot function on a real SmolLM2 profile and on a synthetic one whose numbers
are known, checked through the artists it drew (bars, images, labels), not by eye."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from workbench import views  # noqa: E402
from workbench.profile import Profile, run_profile  # noqa: E402
from workbench.views import cost, loadtime, sparsity, touch  # noqa: E402

PAGE = 4096
MS = 1_000_000


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---- a synthetic profile with known numbers -------------------------------------------
#
# File: 2 header pages, then token_embd (64 rows of one page each, pages 2..65), four
# block tensors of 4 one-page rows (pages 66..81), output_norm (page 82), output (83..86).
# Three passes: prefill of 2 tokens (pos 0), decode at pos 2 and 3. The embedding reads rows
# {3, 40}, {7}, {3}; every other weight op reads all rows. Residency: fault-around mapped a
# 16-page window around each embedding row read in the prefill (pages 2..17 and 34..49).

def _tensor(rows, row_bytes, offset, typ="Q8_0"):
    return {"type": typ, "rows": rows, "row_bytes": row_bytes, "nbytes": rows * row_bytes, "offset": offset}


SYN_TENSORS = {
    "token_embd.weight": _tensor(64, PAGE, 2 * PAGE),
    "blk.0.attn_q.weight": _tensor(4, PAGE, 66 * PAGE, "Q4_1"),
    "blk.0.ffn_gate.weight": _tensor(4, PAGE, 70 * PAGE, "Q4_1"),
    "blk.1.attn_q.weight": _tensor(4, PAGE, 74 * PAGE, "Q4_1"),
    "blk.1.ffn_gate.weight": _tensor(4, PAGE, 78 * PAGE, "Q4_1"),
    "output_norm.weight": _tensor(1, 1024, 82 * PAGE, "F32"),
    "output.weight": _tensor(4, PAGE, 83 * PAGE, "Q4_1"),
}
N_PAGES = 87
EMBED_ROWS = {0: [3, 40], 2: [7], 3: [3]}


def _pages(*ranges):
    m = np.zeros(N_PAGES, bool)
    for a, b in ranges:
        m[a:b] = True
    return m


def synthetic_profile() -> Profile:
    events, t = [], 0

    def ev(op, layer, tensor, phase, pos, n, wall_ms, rows=None, minflt=0, wbytes=0):
        nonlocal t
        events.append({"seq": len(events), "op": op, "layer": layer, "tensor": tensor, "backend": "numpy",
                       "fallback": False, "phase": phase, "pos": pos, "n_tokens": n, "in_shapes": [[n, 8]],
                       "out_shape": [n, 8], "dtype": "float32", "start_ns": t, "wall_ns": int(wall_ms * MS),
                       "cpu_ns": int(wall_ms * MS), "weight_bytes": wbytes, "flops": 1000, "minflt": minflt,
                       "majflt": 0, "rows": rows})
        t += int(wall_ms * MS) + MS // 10

    for phase, pos, n in (("prefill", 0, 2), ("decode", 2, 1), ("decode", 3, 1)):
        k, first = n, phase == "prefill"  # prefill ops take twice as long (2 tokens)
        ev("embed", None, "token_embd.weight", phase, pos, n, 1 * k, EMBED_ROWS[pos], 2 if first else 0,
           len(EMBED_ROWS[pos]) * PAGE)
        for L in (0, 1):
            ev("rms_norm", L, None, phase, pos, n, 0.5 * k)
            ev("matmul", L, f"blk.{L}.attn_q.weight", phase, pos, n, 2 * k, None, 1 if first else 0, 4 * PAGE)
            ev("attention", L, None, phase, pos, n, 1 * k)
            ev("matmul", L, f"blk.{L}.ffn_gate.weight", phase, pos, n, 3 * k, None, 1 if first else 0, 4 * PAGE)
            ev("silu_mul", L, None, phase, pos, n, 0.5 * k)
        ev("rms_norm", None, "output_norm.weight", phase, pos, n, 0.5 * k, None, 1 if first else 0, 1024)
        ev("matmul", None, "output.weight", phase, pos, n, 4 * k, None, 4 if first else 0, 4 * PAGE)

    header = (0, 2)
    after = _pages(header, (2, 18), (34, 50), (66, 87))
    cached_after = _pages((0, 50), (66, 87))  # readahead brought in more of token_embd
    samples = [{"phase": "prefill", "pos": 0, "t_ns": 0, "mapped": _pages(header), "cached": _pages(header)}]
    samples += [{"phase": "decode", "pos": p, "t_ns": 1, "mapped": after.copy(), "cached": cached_after.copy()}
                for p in (2, 3)]
    samples.append({"phase": "end", "pos": 3, "t_ns": 2, "mapped": after.copy(), "cached": cached_after.copy()})
    residency = {"page_size": PAGE, "n_pages": N_PAGES, "samples": samples,
                 "fault_around": {"touches": 10, "minor_faults": 10, "major_faults": 0, "pages_mapped": 160,
                                  "pages_per_fault": 16.0, "pages_per_touch": 16.0, "stride_pages": 64}}
    meta = {"model": {"path": "synthetic.gguf", "name": "synthetic", "n_layer": 2},
            "settings": {"backend": "numpy", "weight_cache": "none", "cold": True, "madvise": None},
            "recorder_overhead_ms": 0.0}
    return Profile(meta, events, {}, dict(SYN_TENSORS), residency)


@pytest.fixture(scope="module")
def syn():
    return synthetic_profile()


@pytest.fixture(scope="module")
def real(smollm2_path):
    """A real SmolLM2 profile: mapped weights (no cache), residency on, 3 generated tokens."""
    return run_profile(str(smollm2_path), "The capital of France is", n=3)


def bar_values(ax, horizontal=True):
    return [p.get_width() if horizontal else p.get_height() for p in ax.patches]


def texts(ax_or_fig) -> str:
    fig = ax_or_fig.get_figure(root=True) if hasattr(ax_or_fig, "get_figure") else ax_or_fig
    out = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    return "\n".join(out)


# ---- per-op cost ----------------------------------------------------------------------

def test_op_cost_synthetic_bars_are_ms_per_pass(syn):
    ax = views.plot_op_cost(syn)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["matmul", "attention", "rms_norm", "embed", "silu_mul"]
    # prefill bars first (one pass of 2 tokens), then decode (mean of 2 passes)
    prefill, decode = bar_values(ax)[:5], bar_values(ax)[5:]
    np.testing.assert_allclose(prefill, [28, 4, 3, 2, 2], rtol=1e-9)
    np.testing.assert_allclose(decode, [14, 2, 1.5, 1, 1], rtol=1e-9)
    assert "ms" in ax.get_xlabel() and "per forward pass" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["prefill", "decode"]
    assert "Where the time goes" in ax.get_title()


def test_op_cost_top_n_folds_the_rest(syn):
    ax = views.plot_op_cost(syn, by="tensor", phase="decode", top=2, normalize=None)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:2] == ["output.weight", "blk.0.ffn_gate.weight"] and labels[2].startswith("other (")
    # totals over both decode passes; the folded group holds the remainder exactly
    assert bar_values(ax)[0] == pytest.approx(8.0)
    assert sum(bar_values(ax)) == pytest.approx(sum(e["wall_ns"] for e in syn.events if e["phase"] == "decode") / MS)


def test_op_cost_by_layer_is_vertical_in_layer_order(syn):
    ax = views.plot_op_cost(syn, by="layer")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:2] == ["0", "1"] and labels[2].startswith("outside")
    # layer 0, prefill: 2 * (0.5 + 2 + 1 + 3 + 0.5) = 14 ms
    assert bar_values(ax, horizontal=False)[0] == pytest.approx(14)
    assert ax.get_xlabel() == "transformer layer"


def test_layer_cost_stacks_ops_per_layer(syn):
    cols, ops, m, unit = cost.layer_op_matrix(syn.events, "decode")
    assert cols == ["in", "0", "1", "out"] and unit == "per forward pass"
    np.testing.assert_allclose(m.sum(axis=0), [1, 7, 7, 4.5])  # embed | two layers | norm + output
    ax = views.plot_layer_cost(syn, phase="decode")
    assert len(ax.patches) == len(ops) * len(cols)
    assert "ms" in ax.get_ylabel()


def test_token_timeline_one_row_per_layer(syn):
    ax = views.plot_token_timeline(syn)  # default: the last decode pass
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["embedding", "layer 0", "layer 1", "output"]
    n_spans = sum(len(c.get_paths()) for c in ax.collections)
    assert n_spans == 13  # every op of the pass is one span
    assert "position 3" in ax.get_title()
    ax = views.plot_token_timeline(syn, phase="prefill")
    assert "prefill of 2 tokens" in ax.get_title()
    assert ax.get_xlim()[1] == pytest.approx(40.2 * 1.01, rel=1e-3)  # 39 ms of ops + 12 gaps of 0.1 ms, +1 %


# ---- touch maps -----------------------------------------------------------------------

def test_touch_grid_logical_mapped_gap(syn):
    grid, names = touch.touch_grid(syn, "logical", None, blocks=64, tensors="token_embd")
    assert names == ["token_embd.weight"]
    assert set(np.flatnonzero(grid[0])) == {3, 7, 40}  # one page per row: rows read over the run
    grid, _ = touch.touch_grid(syn, "mapped", None, blocks=64, tensors="token_embd")
    assert set(np.flatnonzero(grid[0])) == set(range(16)) | set(range(32, 48))
    grid, _ = touch.touch_grid(syn, "gap", None, blocks=64, tensors="token_embd")
    assert grid.sum() == 32 - 3
    # one decode pass: row 7 only; nothing new was mapped in it
    grid, _ = touch.touch_grid(syn, "logical", 1, blocks=64, tensors="token_embd")
    assert set(np.flatnonzero(grid[0])) == {7}
    assert touch.layer_mask(syn, "mapped", 1, new=True).sum() == 0
    assert touch.layer_mask(syn, "mapped", 0, new=True).sum() == 16 + 16 + 21


def test_touch_map_rows_and_values(syn):
    ax = views.plot_touch_map(syn, "logical", span=0, blocks=16)
    img = ax.get_images()[0].get_array()
    assert img.shape == (len(SYN_TENSORS), 16)
    assert 0 <= img.min() and img.max() <= 1
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "token_embd"
    assert img[0].sum() == pytest.approx(2 / 4)  # rows 3 and 40 -> 2 of the 64 pages, in 16 slices of 4 pages
    assert "prefill of 2 tokens" in ax.get_title() and "logical" in ax.get_title()


def test_touch_layers_four_panels_with_the_gap(syn):
    axs = views.plot_touch_layers(syn, blocks=64, tensors=r"token_embd|blk\.0\.")
    assert len(axs) == 4
    titles = [a.get_title() for a in axs]
    assert titles[0].startswith("logical") and titles[1].startswith("mapped") and titles[2].startswith("cached")
    assert "mapped but never read" in titles[3]
    gap = axs[3].get_images()[0].get_array()
    assert gap[0].sum() == 29 and gap[1:].sum() == 0  # only token_embd has pages mapped that nobody read
    assert f"{(16 + 16 + 8) * PAGE / 1e6:.1f} MB" in titles[1]


def test_fault_estimates_synthetic(syn):
    f = views.fault_estimates(syn)
    assert f["faults"] == 11
    assert f["faults_4k"] == 11 * PAGE and f["faults_fault_around"] == 11 * PAGE * 16
    assert f["logical"] == 3 * PAGE + 16 * PAGE + 1024 + 4 * PAGE
    assert f["weights"] == sum(t["nbytes"] for t in SYN_TENSORS.values())
    ax = views.plot_fault_estimates(syn)
    vals = bar_values(ax)
    assert len(vals) == 5
    np.testing.assert_allclose(vals[:3], [f["logical"] / 1e6, f["faults_4k"] / 1e6, f["faults_fault_around"] / 1e6])
    assert "MB" in ax.get_xlabel() and "cold cache" in ax.get_title()


def test_faults_by_tensor_and_passes(syn):
    rows = {r["group"]: r for r in touch.faults_by_tensor(syn)}
    assert rows["token_embd"]["faults"] == 2 and rows["attn_q"]["faults"] == 2 and rows["output"]["faults"] == 4
    ax = views.plot_faults_by_tensor(syn)
    assert len(ax.patches) == 4 * len(rows)
    d = touch.residency_passes(syn)
    assert d["labels"] == ["start", "after prefill", "after pos 2", "after pos 3"]
    assert d["faults_4k_MB"] == pytest.approx([0, 11 * PAGE / 1e6] + [11 * PAGE / 1e6] * 2)
    ax = views.plot_residency_passes(syn)
    assert len(ax.get_lines()) == 4


def test_tensor_reads_strips(syn):
    ax = views.plot_tensor_reads(syn, "token_embd.weight", bins=64)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["embed: 3 of 64 rows (4.69 %)"]
    assert ax.get_images()[0].get_array().sum() == 3


# ---- the same views on a real SmolLM2 profile ---------------------------------------------

REAL_VIEWS = {
    "op_cost": lambda p: views.plot_op_cost(p),
    "op_cost_tensor": lambda p: views.plot_op_cost(p, by="tensor", phase="decode", top=10),
    "op_cost_layer": lambda p: views.plot_op_cost(p, by="layer"),
    "layer_cost": lambda p: views.plot_layer_cost(p),
    "timeline": lambda p: views.plot_token_timeline(p),
    "touch_map": lambda p: views.plot_touch_map(p, "mapped", span=0),
    "touch_layers": lambda p: views.plot_touch_layers(p, span=-1, tensors=r"^blk\.3\."),
    "fault_estimates": lambda p: views.plot_fault_estimates(p),
    "faults_by_tensor": lambda p: views.plot_faults_by_tensor(p),
    "residency_passes": lambda p: views.plot_residency_passes(p),
    "tensor_reads": lambda p: views.plot_tensor_reads(p),
}


@pytest.mark.parametrize("name", list(REAL_VIEWS))
def test_real_profile_views_draw_labelled_figures(real, name):
    out = REAL_VIEWS[name](real)
    axs = out if isinstance(out, list) else [out]
    fig = axs[0].get_figure(root=True)
    assert "SmolLM2" in texts(fig)  # every view names the model it shows
    for a in axs:
        assert a.get_xlabel() or a.get_ylabel()
        for im in a.get_images():
            arr = np.asarray(im.get_array())
            assert np.nanmin(arr) >= 0 and np.nanmax(arr) <= 1


def test_real_profile_numbers(real):
    ax = views.plot_op_cost(real, by="op", phase="decode")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "matmul"  # the matrix multiplies dominate a decode step
    ax = views.plot_token_timeline(real)
    assert len(ax.get_yticklabels()) >= 16 and ax.get_yticklabels()[0].get_text() == "embedding"
    f = views.fault_estimates(real)
    assert f["logical"] == f["weights"]  # SmolLM2 reads every weight (tied output reads all of token_embd)
    assert 0 < f["faults_4k"] < f["logical"]  # faults x 4 KiB understates (fault-around, or pages already mapped)
    grid, names = touch.touch_grid(real, "logical", -1)
    assert len(names) == 272 and grid.min() == 1.0  # one decode step reads every page of every tensor
    reads = touch.tensor_reads(real, "token_embd.weight", span=-1)
    assert int(reads["embed"].sum()) == 1 and reads["matmul (output projection)"].all()


# ---- sparsity -------------------------------------------------------------------------

def test_weight_hist_and_block_map_on_known_values():
    w = np.ones((64, 64), np.float32)
    w[:16, :32] = 0.001  # a quarter of the rows, half of each: 1/8 of all weights near zero
    ax = views.plot_weight_hist(w, threshold=0.01)
    assert "12.50 %" in texts(ax)
    assert ax.get_xscale() == "log" and "|w|" in ax.get_xlabel()
    m, per = sparsity.block_map(w, 0.01, block=32, max_rows=16)
    assert per == 4 and m.shape == (16, 2)
    np.testing.assert_allclose(m[:4, 0], 1) and np.testing.assert_allclose(m[4:], 0)
    ax = views.plot_weight_block_map(w, 0.01, max_rows=16)
    assert ax.get_images()[0].get_array().shape == (16, 2)


def test_weight_sparsity_of_smollm2(smollm2):
    t = smollm2.weights.blocks[2].ffn_gate
    ax = views.plot_weight_hist(t, 0.01)
    assert "blk.2.ffn_gate (Q4_1, 1536 x 576)" in ax.get_title()
    rows = views.weight_sparsity(smollm2, 0.01)
    assert len(rows) == 272
    assert all(0 <= r["near_zero"] <= 1 for r in rows)
    total = sum(r["near_zero"] * r["n"] for r in rows) / sum(r["n"] for r in rows)
    assert 0.005 < total < 0.3  # Q4_1 weights: a few percent have |w| < 0.01
    ax = views.plot_weight_sparsity(rows)
    assert ax.get_images()[0].get_array().shape == (30, 9)
    axs = views.plot_weight_overview(t, 0.01)
    assert len(axs) == 2


def test_ffn_activation_hook_captures_and_restores(smollm2):
    ref = __import__("workbench").generate(smollm2, "The capital of France is", n=3)
    calls = []
    acts = views.capture_ffn_activations(smollm2, "The capital of France is", n=3,
                                         progress=lambda d, t: calls.append((d, t)))
    assert "silu_mul" not in vars(smollm2.ops)  # the hook is gone
    n_tok = len(ref.prompt_ids) + 2  # the last generated token is never fed back
    assert acts.gate.shape == (30, n_tok, 1536) and acts.product.shape == acts.gate.shape
    assert acts.n_prompt == len(ref.prompt_ids) and len(acts.tokens) == n_tok
    assert acts.gate.min() >= -0.2785 - 1e-4  # silu's minimum
    assert calls[-1] == (3, 3)
    again = __import__("workbench").generate(smollm2, "The capital of France is", n=3)
    assert again.ids == ref.ids  # generation unchanged by having been hooked
    f = sparsity.activation_sparsity(acts, 0.05)
    assert f.shape == (30, n_tok) and 0 < f.mean() < 1
    ax = views.plot_activation_sparsity(acts, 0.05)
    assert ax.get_images()[0].get_array().shape == (30, n_tok)
    assert "prompt" in ax.get_xlabel()
    ax = views.plot_activation_hist(acts, 5)
    assert "layer 5" in ax.get_title()


def test_activation_sparsity_known_fractions():
    gate = np.ones((2, 3, 10), np.float32)
    gate[0, :, :4] = 0.0  # layer 0: 40 % zeros
    acts = sparsity.FFNActivations(gate, gate * 2, ["a", " b", "\n"], n_prompt=2)
    f = sparsity.activation_sparsity(acts, 0.5)
    np.testing.assert_allclose(f, [[0.4] * 3, [0] * 3])
    ax = views.plot_activation_sparsity(acts, 0.5)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "\u2423b", "\\n"]


# ---- sparse loading ---------------------------------------------------------------------

def _known_activations():
    """(3 layers, 4 tokens, 10 neurons): neuron j of layer L has |a| = (j + 1) / 10 when
    (j + L + token) is even, else 0.001 (inactive at t = 0.01)."""
    L, T, N = np.meshgrid(np.arange(3), np.arange(4), np.arange(10), indexing="ij")
    return np.where((N + L + T) % 2 == 0, (N + 1) / 10, 0.001).astype(np.float32)


def test_near_zero_by_layer_lines():
    a = _known_activations()
    ax = views.plot_near_zero_by_layer(a, thresholds=(0.01, 0.35))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["|a| < 0.01", "|a| < 0.35"]
    for line, t in zip(ax.lines, (0.01, 0.35)):
        np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2])
        below = [np.mean([sum(abs(a[L, T, j]) < t for j in range(10)) for T in range(4)]) / 10 for L in range(3)]
        np.testing.assert_allclose(line.get_ydata(), below)
    # t = 0.01: the half at 0.001; t = 0.35 adds the active ones of j = 0, 1, 2 (2 or 1 per token)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 0.5)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), 0.65)
    assert "10 neurons" in ax.get_ylabel()


def test_neuron_frequency_sorted_shares():
    a = _known_activations()
    a[1, :, 9] = 0.0  # layer 1, neuron 9: never active
    ax = views.plot_neuron_frequency(a, layers=(0, 1), t=0.01)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["layer 0", "layer 1"]
    for line, L in zip(ax.lines, (0, 1)):
        share = [sum(abs(a[L, T, j]) >= 0.01 for T in range(4)) / 4 for j in range(10)]
        np.testing.assert_allclose(line.get_ydata(), sorted(share, reverse=True))
    assert ax.lines[1].get_ydata()[-1] == 0.0


def test_activation_stability_jaccard():
    a = _known_activations()
    a[2, 3] = 0.5  # layer 2, last token: every neuron active
    ax = views.plot_activation_stability(a, t=0.01, top_fraction=0.2)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["|a| >= 0.01", "top 20 % (2 largest |a|)"]

    def jaccard(x, y):
        return len(x & y) / len(x | y) if x | y else 1.0

    def sets(L, active):
        return [{j for j in range(10) if active(L, T, j)} for T in range(4)]

    above = lambda L, T, j: abs(a[L, T, j]) >= 0.01
    top2 = lambda L, T, j: j in np.argsort(-np.abs(a[L, T]), kind="stable")[:2]
    for line, active in zip(ax.lines, (above, top2)):
        want = [np.mean([jaccard(s[T], s[T - 1]) for T in range(1, 4)]) for s in (sets(L, active) for L in range(3))]
        np.testing.assert_allclose(line.get_ydata(), want)
    # alternating halves never overlap; layer 2's last token overlaps the previous half fully
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0, 0, (0 + 0 + 0.5) / 3])


def test_policy_sweep_panels():
    rows = [{"policy": f"threshold(t={t:g})", "kl_mean": kl, "neurons_used": u, "gate_up_bytes": u,
             "down_bytes": d, "gguf_bytes": gb, "gguf_pages": gp, "bundle_bytes": u, "bundle_pages": bp}
            for t, kl, u, d, gb, gp, bp in [(0.005, 1e-4, 0.9, 1.0, 0.95, 1.0, 0.97),
                                            (0.05, 1e-2, 0.5, 0.98, 0.7, 0.99, 0.8)]]
    axs = views.plot_policy_sweep(rows)
    assert len(axs) == 2
    left = {l.get_label(): l for l in axs[0].lines}
    np.testing.assert_allclose(left["pages of the GGUF file"].get_xdata(), [1.0, 0.99])
    np.testing.assert_allclose(left["pages, bundled layout"].get_xdata(), [0.97, 0.8])
    np.testing.assert_allclose(left["logical bytes, GGUF layout (ffn_down by blocks)"].get_xdata(), [0.95, 0.7])
    for line in axs[0].lines:
        np.testing.assert_allclose(line.get_ydata(), [1e-4, 1e-2])
    assert axs[0].get_yscale() == "log"
    assert [t.get_text() for t in axs[0].texts] == ["t=0.005", "t=0.05"]
    right = {l.get_label(): l for l in axs[1].lines}
    np.testing.assert_allclose(right["ffn_down column blocks"].get_xdata(), [0.9, 0.5])
    np.testing.assert_allclose(right["ffn_down column blocks"].get_ydata(), [1.0, 0.98])
    np.testing.assert_allclose(right["ffn_gate + ffn_up rows"].get_ydata(), [0.9, 0.5])


# ---- load time ------------------------------------------------------------------------

def _run(strategy, cold, threads=1, seconds=0.1):
    tensors = [] if strategy == "mmap" else [
        {"name": f"t{i}", "start": 0.01 * i, "end": 0.01 * i + 0.005, "bytes": 1000, "thread": i % threads,
         "minflt": 0, "majflt": 0} for i in range(5)]
    samples = [{"t": 0.02 * k, "cached_bytes": 10_000_000 * k, "mapped_bytes": 5_000_000 * k,
                "rss_anon": 20_000_000, "rss_file": 1_000_000 * k} for k in range(6)]
    return {"strategy": strategy, "threads": threads, "cold": cold, "file_bytes": 50_000_000,
            "cached_after_evict": 0, "seconds": seconds, "first_token_seconds": seconds * 3, "tensors": tensors,
            "samples": samples, "faults": {"minor": 10, "major": 1}, "weight_cache": {}}


def test_load_views_synthetic():
    axs = views.plot_load_timeline(_run("mmap+touch", True, threads=2))
    assert len(axs) == 2
    assert len(axs[0].patches) == 5  # one span per tensor
    labels = [l.get_label() for l in axs[1].get_lines() if not l.get_label().startswith("_")]
    assert labels == ["file in the page cache", "model mapping present (pagemap)", "RSS anonymous (copies, heap)",
                      "RSS file-backed (mapped pages)"]
    assert "ms" in axs[1].get_xlabel() and axs[1].get_ylabel() == "MB"
    assert [t.get_text() for t in axs[0].get_legend().get_texts()] == ["thread 1", "thread 2"]
    ax = views.plot_tensor_spans(_run("mmap", False))
    assert "no per-tensor pass" in texts(ax)
    bench = {"model": "synthetic.gguf", "runs": [_run(s, c, seconds=0.1 * (i + 1)) for i, s in enumerate(["read", "mmap"])
                                                 for c in (True, False)]}
    grid = views.plot_load_bench(bench)
    assert grid.shape == (2, 2) and "cold" in grid[0, 0].get_title() and "warm" in grid[0, 1].get_title()
    ax = views.plot_load_summary(bench)
    heights = bar_values(ax, horizontal=False)
    assert len(heights) == 8  # 4 series x 2 strategies
    assert heights[:2] == pytest.approx([100, 200])  # load, cold: read 0.1 s, mmap 0.2 s


def test_load_timeline_on_a_real_load(smollm2_path):
    from workbench.loading import load_file

    g, rep = load_file(smollm2_path, "mmap+touch", threads=2)
    g.close()
    axs = views.plot_load_timeline(rep)
    assert len(axs[0].patches) == 272
    assert "mmap+touch, 2 threads, warm cache" in texts(axs[0])


# ---- backends ---------------------------------------------------------------------------

def test_backend_comparison_synthetic(syn):
    other = synthetic_profile()
    other.meta = json.loads(json.dumps(syn.meta))
    other.meta["settings"]["backend"] = "opencl"
    for e in other.events:
        e["wall_ns"] //= 2
    errors = {"opencl": {"matmul": {"max_abs": 1e-3, "max_rel": 1e-5}, "attention": {"max_abs": 0.0}}}
    axs = views.plot_backend_comparison([syn, other], errors=errors)
    assert len(axs) == 2
    t0 = bar_values(axs[0])
    n = len(t0) // 2
    np.testing.assert_allclose(t0[n:], np.array(t0[:n]) / 2, rtol=1e-6)
    assert [t.get_text() for t in axs[0].get_legend().get_texts()] == ["numpy", "opencl"]
    err = dict(zip([t.get_text() for t in axs[1].get_yticklabels()], bar_values(axs[1])))
    assert err["matmul"] == pytest.approx(1e-3) and err["attention"] == pytest.approx(1e-12)
    assert "0 (exact)" in texts(axs[1])
    axs = views.plot_backend_comparison({"a": syn})
    assert "no error measurements" in texts(axs[1])


def _device_timed(profile):
    """A copy of the synthetic profile whose matmuls ran on a device: device time = wall / 4."""
    other = synthetic_profile()
    for e in other.events:
        e["device_ns"] = e["wall_ns"] // 4 if e["op"] == "matmul" else -1
    return other


def test_table_device_ms(syn):
    assert all("device_ms" not in r for r in syn.table("op"))  # no device times: no column
    rows = {r["op"]: r for r in _device_timed(syn).table("op", "decode")}
    want = sum(e["wall_ns"] // 4 for e in syn.events if e["op"] == "matmul" and e["phase"] == "decode") / MS
    assert rows["matmul"]["device_ms"] == pytest.approx(want) == pytest.approx(14 * 2 / 4)
    assert rows["attention"]["device_ms"] is None


def test_host_device_bars(syn):
    prof = _device_timed(syn)
    ax = views.plot_host_device(prof, phase="decode")
    ops = [t.get_text() for t in ax.get_yticklabels()]
    assert ops == ["matmul", "attention", "rms_norm", "embed", "silu_mul"]  # most host time first
    dec = [e for e in syn.events if e["phase"] == "decode"]
    host = [np.mean([e["wall_ns"] for e in dec if e["op"] == op]) / 1e3 for op in ops]
    widths = bar_values(ax)
    np.testing.assert_allclose(widths[:len(ops)], host)  # host bars, then the device bars that exist
    assert len(widths) == len(ops) + 1
    mm = [e["wall_ns"] // 4 for e in dec if e["op"] == "matmul"]
    assert widths[-1] == pytest.approx(sum(mm) / len(mm) / 1e3)
    assert ax.get_xscale() == "log" and "microseconds per call" in ax.get_xlabel()
    assert "no device times" in views.plot_host_device(syn).get_title()


def test_op_errors_numpy_weight_cache(smollm2_path):
    import workbench
    from workbench.backends import make_backend

    m = workbench.load(smollm2_path)
    try:
        errs = views.op_errors(m, make_backend("numpy", weight_cache="f32"), n=1)  # the prompt pass only
        assert "_run" not in vars(m.ops)
    finally:
        m.close()
    assert set(errs) >= {"matmul", "attention", "rms_norm", "embed"}
    assert errs["embed"]["max_abs"] == 0 and errs["attention"]["max_abs"] == 0
    assert 0 <= errs["matmul"]["max_rel"] < 1e-4  # the same dequantized values, summed in another order
    assert errs["matmul"]["calls"] == 211


# ---- static PNGs ----------------------------------------------------------------------

@pytest.mark.parametrize("which", ["syn", "real"])
def test_save_profile_plots(which, request, tmp_path):
    from PIL import Image

    prof = request.getfixturevalue(which)
    paths = views.save_profile_plots(prof, tmp_path)
    assert [p.name for p in paths] == ["op_cost.png", "layer_cost.png", "timeline.png", "touch_map.png",
                                       "touch_layers.png", "fault_estimates.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width >= 600 and im.height >= 250
    assert not plt.get_fignums()  # every figure was closed


# ---- widgets (UI state only; the same plot functions) ------------------------------------

def test_touch_explorer(syn):
    widgets = pytest.importorskip("workbench.views.widgets")
    w = widgets.TouchExplorer(syn)
    first = w.png()
    assert first.startswith(b"\x89PNG") and "whole=True" in w.status.value
    w.whole.value = False
    w.token.value = 1
    assert "pass=1" in w.status.value and w.png() != first
    w.truth.value = "all three"
    w.kind.value = "attn_q"
    assert "truth=all three" in w.status.value and "error" not in w.status.value
    bundle = w._repr_mimebundle_()
    assert {"application/vnd.jupyter.widget-view+json", "image/png"} <= set(bundle)


def test_op_cost_explorer_and_table(syn, tmp_path):
    widgets = pytest.importorskip("workbench.views.widgets")
    w = widgets.OpCostExplorer(syn)
    w.by.value = "tensor"
    w.top.value = 3
    assert w.table.value.count("<tr>") == 1 + 3
    w.save_png(tmp_path / "cost.png")
    assert (tmp_path / "cost.png").read_bytes() == w.png()


def test_sparsity_and_generation_widgets(smollm2):
    widgets = pytest.importorskip("workbench.views.widgets")
    s = widgets.SparsityExplorer(smollm2, tensor="blk.1.ffn_up.weight")
    before = s.png()
    s.threshold.value = 0.1
    assert "threshold=0.1" in s.status.value and s.png() != before
    g = widgets.GenerationWidget(smollm2, prompt="Hello", n=2)
    g.run()
    assert "data-state='done:2'" in g.table.value and "matmul" in g.table.value
    assert g.progress.value == 2
    p = widgets.Progress("x", show=False)
    p(3, 4)
    assert p.bar.value == 3 and p.bar.max == 4


def test_save_profile_plots_without_touch_or_residency(tmp_path):
    prof = synthetic_profile()
    prof.meta["settings"]["touch"] = False  # rows were not kept: no touch map may claim anything
    prof.residency = {}
    paths = views.save_profile_plots(prof, tmp_path)
    assert [p.name for p in paths] == ["op_cost.png", "layer_cost.png", "timeline.png"]
