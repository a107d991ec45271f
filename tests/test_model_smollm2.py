"""SmolLM2 (the real model) against llama.cpp's outputs and an independent f32 reference."""

import json

import numpy as np
import pytest
from conftest import FIXTURES
from reference import ReferenceLlama, kl, top

REF = json.loads((FIXTURES / "llamacpp/smollm2/prompts.json").read_text())
PROMPTS = {c: {p["name"]: p for p in ps} for c, ps in REF["configs"].items()}


def last_logits(model, ids):
    return model.forward(model.new_state(len(ids)), ids)[-1]


@pytest.mark.parametrize("config", ["precise", "default"])
@pytest.mark.parametrize("name", ["Q1", "Q2", "Q3", "Q4", "Q5"])
def test_last_position_matches_llamacpp(smollm2, config, name):
    p = PROMPTS[config][name]
    ref = np.load(FIXTURES / "llamacpp/smollm2" / p["last_logits_file"])
    ours = last_logits(smollm2, p["token_ids"])
    assert int(ours.argmax()) == int(ref.argmax())
    assert len(top(ours) & top(ref)) >= 8
    assert kl(ref, ours) <= 0.02


@pytest.mark.parametrize("name", ["Q1", "Q2", "Q3", "Q4", "Q5"])
def test_teacher_forced_argmax_agrees(smollm2, name):
    """Feed llama.cpp's own 32-token greedy continuation; our argmax must agree at >= 29 of 32."""
    p = PROMPTS["precise"][name]
    ids, greedy = p["token_ids"], p["greedy_ids"]
    logits = smollm2.forward(smollm2.new_state(len(ids) + 32), ids + greedy[:31], all_logits=True)
    ours = logits[len(ids) - 1 :].argmax(axis=1)
    agree = int((ours == np.array(greedy)).sum())
    assert agree >= 29, (agree, ours.tolist(), greedy)


def test_decode_path_equals_batched_prefill(smollm2):
    """One token at a time through the KV cache gives the batched pass's logits."""
    ids = PROMPTS["precise"]["Q3"]["token_ids"]
    batched = smollm2.forward(smollm2.new_state(len(ids)), ids, all_logits=True)
    st = smollm2.new_state(len(ids))
    stepped = np.stack([smollm2.forward(st, [t])[-1] for t in ids])
    np.testing.assert_allclose(stepped, batched, atol=2e-3, rtol=0)
    assert (stepped.argmax(1) == batched.argmax(1)).all()


def test_weight_cache_modes_agree(smollm2_path, smollm2):
    import workbench

    ids = PROMPTS["precise"]["Q1"]["token_ids"]
    lazy = workbench.load(smollm2_path, weight_cache="none")
    try:
        np.testing.assert_allclose(last_logits(lazy, ids), last_logits(smollm2, ids), atol=1e-3, rtol=0)
    finally:
        lazy.close()


def test_against_independent_f32_reference(smollm2_path, smollm2):
    """gguf-py's dequantization + a plain float64 forward (tests/reference.py)."""
    ids = PROMPTS["precise"]["Q2"]["token_ids"]
    ref = ReferenceLlama(smollm2_path).logits(ids)
    ours = smollm2.forward(smollm2.new_state(len(ids)), ids, all_logits=True)
    assert np.abs(ours - ref).max() < 0.02
    assert kl(ref, ours) < 1e-4
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_greedy_generation_follows_llamacpp(smollm2):
    """Temperature 0 text: the first tokens equal llama.cpp's until a near-tie (gap < 0.5) lets them part."""
    import workbench

    for name in ("Q1", "Q3"):
        p = PROMPTS["precise"][name]
        r = workbench.generate(smollm2, p["text"], n=16)
        assert r.prompt_ids == p["token_ids"]
        for step, (a, b) in enumerate(zip(r.ids, p["greedy_ids"])):
            if a != b:
                assert p["top2_gap_per_step"][step] < 0.5, (name, step)
                break
        assert len(r.text) > 10 and r.stop_reason in ("length", "eog")
