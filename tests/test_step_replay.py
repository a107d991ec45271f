"""A decode step recorded once and replayed (kernels/opencl_backend.StepGraph, Model.forward):
on the real models, replayed steps give exactly the logits the Python forward gives (the same
kernels on the same data), up to the last position of the cache; a recorder, a per-op
choice or a numpy fallback keeps every step in the forward."""

from __future__ import annotations

import numpy as np
import pytest

import workbench
from kernels.base import BackendError


def _load(path, **kw):
    pytest.importorskip("pyopencl", reason="the opencl backend needs pyopencl")
    try:
        return workbench.load(path, backend="opencl", **kw)
    except BackendError as e:
        pytest.skip(f"no usable OpenCL device: {e}")


@pytest.fixture(scope="module")
def smollm2_cl(smollm2_path):
    m = _load(smollm2_path)
    yield m
    m.close()


def _greedy_logits(m, state, ids, steps):
    logits, out = m.forward(state, ids)[-1], []
    for _ in range(steps):
        logits = m.forward(state, [int(np.argmax(logits))])[-1]
        out.append(logits)
    return out


def _forward_only(m, monkeypatch):
    """Every step through the Python forward: the backend records none."""
    monkeypatch.setattr(type(m.ops.backend), "can_capture", lambda self: False)


@pytest.mark.parametrize("full", [False, True])  # True: up to the cache's last position
def test_replayed_steps_give_the_forwards_logits(smollm2_cl, monkeypatch, full):
    m = smollm2_cl
    ids = m.tokenizer.encode("The capital of France is")
    steps = 18 if full else 12
    n_ctx = len(ids) + steps if full else 256
    st = m.new_state(n_ctx)
    replayed = _greedy_logits(m, st, ids, steps)
    assert st.step is not None
    assert st.pos == (n_ctx if full else len(ids) + steps)
    with monkeypatch.context() as mp:
        _forward_only(m, mp)
        ref_state = m.new_state(n_ctx)
        reference = _greedy_logits(m, ref_state, ids, steps)
        assert ref_state.step is None
    for a, b in zip(replayed, reference):
        np.testing.assert_array_equal(a, b)


def test_gemma3_replayed_steps_give_the_forwards_logits(gemma3_path, monkeypatch):
    """Gemma 3: sliding-window and global layers, two rotation bases, q/k norms."""
    m = _load(gemma3_path)
    try:
        ids = m.tokenizer.encode("The capital of France is")
        st = m.new_state(64)
        replayed = _greedy_logits(m, st, ids, 8)
        assert st.step is not None
        _forward_only(m, monkeypatch)
        reference = _greedy_logits(m, m.new_state(64), ids, 8)
    finally:
        m.close()
    for a, b in zip(replayed, reference):
        np.testing.assert_array_equal(a, b)


def test_a_state_reset_replays_over_a_new_prompt(smollm2_cl, monkeypatch):
    """One state reused (pos back to 0, as the bench and a chat do): the recorded step
    serves the next prompt's decode steps too."""
    m = smollm2_cl
    st = m.new_state(128)
    _greedy_logits(m, st, m.tokenizer.encode("Once upon a time"), 4)
    step = st.step
    st.pos = 0
    ids = m.tokenizer.encode("def fibonacci(n):")
    replayed = _greedy_logits(m, st, ids, 6)
    assert st.step is step
    _forward_only(m, monkeypatch)
    for a, b in zip(replayed, _greedy_logits(m, m.new_state(128), ids, 6)):
        np.testing.assert_array_equal(a, b)


def test_a_recorder_sees_every_op_of_every_step(smollm2_cl):
    m = smollm2_cl
    st = m.new_state(64)
    _greedy_logits(m, st, m.tokenizer.encode("Hello"), 2)
    assert st.step is not None
    with workbench.record(m, faults=False) as rec:
        m.forward(st, [42])
    ev = [e.to_dict() for e in rec.events]
    matmuls = [e for e in ev if e["op"] == "matmul"]
    assert len(matmuls) == 7 * m.config.n_layer + 1  # q k v o gate up down a layer, and the logits
    assert all(e["device_ns"] > 0 for e in matmuls)


def test_nothing_is_replayed_when_an_op_runs_elsewhere(smollm2_path):
    m = _load(smollm2_path, per_op={"rope": "numpy"})
    try:
        st = m.new_state(64)
        _greedy_logits(m, st, m.tokenizer.encode("Hello"), 3)
        assert st.step is None
    finally:
        m.close()
