"""The forward on a tiny synthetic llama model against the independent reference."""

import numpy as np
import pytest
from reference import ReferenceLlama

import workbench
from workbench.generate import stream_ids


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    m = workbench.load(tiny_model_path)
    yield m
    m.close()


def test_all_positions_match_reference(tiny, tiny_model_path):
    ids = [5, 17, 200, 3, 3, 99, 42]
    ref = ReferenceLlama(tiny_model_path).logits(ids)
    ours = tiny.forward(tiny.new_state(16), ids, all_logits=True)
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)


def test_kv_cache_continuation_matches_reference(tiny, tiny_model_path):
    ids = [7, 8, 9, 10, 11, 12]
    ref = ReferenceLlama(tiny_model_path).logits(ids)
    st = tiny.new_state(16)
    tiny.forward(st, ids[:3])
    tail = tiny.forward(st, ids[3:], all_logits=True)
    np.testing.assert_allclose(tail, ref[3:], atol=2e-4, rtol=1e-4)
    assert st.pos == 6


def test_context_full_is_a_clear_error(tiny):
    st = tiny.new_state(4)
    tiny.forward(st, [1, 2, 3, 4])
    with pytest.raises(workbench.ContextFull, match="n_ctx 4"):
        tiny.forward(st, [5])


def test_bad_token_id_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="token id 100000 is out of range"):
        tiny.forward(tiny.new_state(4), [1, 100000])


def test_generation_stops_at_context_limit(tiny):
    st = tiny.new_state(8)
    r = workbench.Generation([5, 6])
    ids = list(stream_ids(tiny, [5, 6], 100, state=st, result=r, stop_at_eog=False))
    assert len(ids) == 7 and r.stop_reason == "context"
