"""Touch maps: logical rows exact; the mapped and cached layers as the OS reports them."""

import numpy as np
import pytest

import workbench
from workbench.instrument.residency import ADVICE, PAGE, Residency, evict, fault_around_probe, rows_to_pages
from workbench.profile import run_profile
from workbench.synth import write_gguf


def test_smollm2_logical_touch_is_exact(smollm2):
    """Embedding reads exactly the rows of the distinct ids (612 B per Q8_0 row); the tied
    output reads all 30,081,024 bytes per computed position; every matmul weight in full."""
    ids = [504, 3287, 504, 17, 3287]
    with workbench.record(smollm2) as rec:
        smollm2.forward(smollm2.new_state(8), ids)
    ev = [e.to_dict() for e in rec.events]
    embed = [e for e in ev if e["op"] == "embed"]
    assert len(embed) == 1 and embed[0]["rows"] == sorted(set(ids))
    assert embed[0]["weight_bytes"] == 3 * 612
    out = [e for e in ev if e["op"] == "matmul" and e["layer"] is None]
    assert len(out) == 1 and out[0]["tensor"] == "token_embd.weight" and out[0]["weight_bytes"] == 30_081_024
    mm = [e for e in ev if e["op"] == "matmul" and e["layer"] is not None]
    assert len(mm) == 30 * 7
    t = smollm2.gguf.tensors
    assert all(e["weight_bytes"] == t[e["tensor"]].nbytes for e in mm)
    assert {e["layer"] for e in mm} == set(range(30))


def _rows_file(path, n_rows=512, row_floats=1024):
    """One F32 tensor whose rows are exactly one page each (1024 x 4 B)."""
    x = np.arange(n_rows * row_floats, dtype=np.float32).reshape(n_rows, row_floats)
    write_gguf(path, {"general.architecture": "test", "general.alignment": np.uint32(PAGE)},
               {"rows.weight": ("F32", (row_floats, n_rows), x.tobytes())}, alignment=PAGE)


def test_three_layers_on_a_synthetic_file(tmp_path):
    p = tmp_path / "rows.gguf"
    _rows_file(p)
    wanted = np.array([3, 100, 101, 400])
    for cold_random in (False, True):
        if cold_random:
            evict(p)
        g = workbench.open_gguf(p, advice=ADVICE["random"] if cold_random else None)
        t = g.tensors["rows.weight"]
        r = Residency(g)
        before = r.mapped()
        vals = t.data[wanted].view(np.float32)[:, 0].copy()  # read the chosen rows
        np.testing.assert_array_equal(vals, wanted * 1024)
        mapped = r.mapped()
        logical = rows_to_pages(t.offset, t.row_bytes, wanted, t.rows, r.n_pages)
        assert logical.sum() == len(wanted)
        assert mapped[logical].all()  # mapped >= logical at page granularity
        data_pages = slice(t.offset // PAGE, None)
        if cold_random:
            # no readahead, no fault-around: the OS-level map equals the logical pages
            np.testing.assert_array_equal((mapped & ~before)[data_pages], logical[data_pages])
            assert r.cached()[data_pages].sum() == len(wanted)
        else:
            assert mapped[data_pages].sum() > logical.sum()  # fault-around maps neighbours
        g.close()


def test_fault_around_probe_sees_more_than_one_page_per_fault(smollm2_path):
    fa = fault_around_probe(smollm2_path)
    assert fa["touches"] > 100
    assert fa["pages_per_fault"] > 1.5  # 16 on this kernel (64 KiB fault-around)


def test_profile_roundtrip_and_touch_layers(tmp_path, smollm2):
    prof = run_profile(smollm2, "The capital of France is", n=3, out=tmp_path / "p")
    back = workbench.profile.load_profile(tmp_path / "p") if hasattr(workbench, "profile") else None
    from workbench.profile import load_profile

    back = load_profile(tmp_path / "p")
    assert len(back.events) == len(prof.events) > 0
    tl = back.touch_layers()["total"]
    assert tl["logical_bytes"] == sum(t.nbytes for t in smollm2.weights.tensors())
    assert tl["mapped_bytes"] >= tl["logical_page_bytes"] - PAGE * 64
    assert (tmp_path / "p" / "trace.json").exists() and (tmp_path / "p" / "summary.md").exists()


def test_profile_schema_version_is_checked(tmp_path):
    from workbench.profile import ProfileError, load_profile

    (tmp_path / "profile.json").write_text('{"schema": "workbench.profile", "version": 99}')
    with pytest.raises(ProfileError, match="schema version 99"):
        load_profile(tmp_path)
    (tmp_path / "profile.json").write_text("{not json")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path)


def test_recording_collects_garbage_less_often_and_restores(tiny_model_path):
    import gc

    from workbench.instrument.recorder import GC_THRESHOLD_WHILE_RECORDING, record

    m = workbench.load(tiny_model_path)
    before = gc.get_threshold()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with record(m, faults=False, touch=False) as rec:
                assert gc.get_threshold()[0] == max(before[0], GC_THRESHOLD_WHILE_RECORDING)
                assert gc.get_threshold()[1:] == before[1:]
                m.forward(m.new_state(8), [1, 2, 3])
                raise RuntimeError("boom")
        assert gc.get_threshold() == before and m.ops.recorder is None
        assert len(rec.events) > 0
    finally:
        m.close()
