"""Gemma 3 270M (the real model) against llama.cpp and an independent float64 reference."""

import json

import numpy as np
import pytest
from conftest import FIXTURES
from reference import ReferenceGemma3, kl, top

import workbench

REF = json.loads((FIXTURES / "llamacpp/gemma3/prompts.json").read_text())
PROMPTS = {p["name"]: p for p in REF["configs"]["precise"]}


@pytest.mark.parametrize("name", ["Q1", "Q2", "Q3", "Q4"])
def test_last_position_matches_llamacpp(gemma3, name):
    p = PROMPTS[name]
    ref = np.load(FIXTURES / "llamacpp/gemma3" / p["last_logits_file"])
    ours = gemma3.forward(gemma3.new_state(len(p["token_ids"])), p["token_ids"])[-1]
    assert int(ours.argmax()) == int(ref.argmax())
    assert len(top(ours) & top(ref)) >= 8
    # Q1 is ill-conditioned: llama.cpp's own default and precise configurations differ by
    # KL 0.234 on it, and ours sits at 0.151 from precise. The next test shows why: with
    # the same weights in F32, llama.cpp agrees with us on Q1 to KL < 1e-4, so the gap is
    # llama.cpp quantizing activations to 8 bits. Every other prompt is held to 0.03.
    assert kl(ref, ours) <= (0.25 if name == "Q1" else 0.03)


@pytest.mark.parametrize("name", ["Q1", "Q2", "Q3", "Q4"])
def test_matches_llamacpp_on_f32_weights(gemma3, name):
    """llama.cpp on the same weights dequantized to F32 (no 8-bit activations): exact agreement."""
    p = PROMPTS[name]
    ref = np.load(FIXTURES / "llamacpp/gemma3" / f"{name.lower()}_last_logits_f32weights.npy")
    ours = gemma3.forward(gemma3.new_state(len(p["token_ids"])), p["token_ids"])[-1]
    assert kl(ref, ours) <= 1e-3
    assert np.abs(ref - ours).max() < 0.1
    assert top(ours) == top(ref)


@pytest.mark.parametrize("name", ["Q1", "Q2", "Q3", "Q4"])
def test_teacher_forced_argmax_agrees(gemma3, name):
    p = PROMPTS[name]
    ids, greedy = p["token_ids"], p["greedy_ids"]
    logits = gemma3.forward(gemma3.new_state(len(ids) + 32), ids + greedy[:31], all_logits=True)
    agree = int((logits[len(ids) - 1 :].argmax(1) == np.array(greedy)).sum())
    assert agree >= 28, agree


def test_against_independent_f64_reference(gemma3_path, gemma3):
    ids = PROMPTS["Q2"]["token_ids"]
    ref = ReferenceGemma3(gemma3_path).logits(ids)
    ours = gemma3.forward(gemma3.new_state(len(ids)), ids, all_logits=True)
    assert np.abs(ours - ref).max() < 1e-3
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_sliding_window_layers(gemma3):
    c = gemma3.config
    assert c.sliding_window == 512 and c.swa_pattern == 6
    assert [L for L in range(c.n_layer) if not c.is_local(L)] == [5, 11, 17]
    assert c.rope_base == 1e6 and c.rope_base_swa == 1e4 and c.attn_scale == 1 / 16


def test_sliding_window_masks_old_positions(gemma3):
    """Past the window, local layers stop seeing the start: logits differ from full attention."""
    import dataclasses

    ids = list(range(1000, 1000 + 40))
    small = dataclasses.replace(gemma3.config, sliding_window=8)
    full = gemma3.forward(gemma3.new_state(64), ids)[-1]
    m = workbench.Model(gemma3.path, gemma3.gguf, small, gemma3.weights, gemma3.tokenizer, gemma3.ops, gemma3.arch)
    windowed = m.forward(m.new_state(64), ids)[-1]
    assert np.abs(full - windowed).max() > 0.1
    st = m.new_state(64)  # the same through the KV cache, token by token
    stepped = [m.forward(st, [t])[-1] for t in ids][-1]
    np.testing.assert_allclose(stepped, windowed, atol=2e-2)


def test_greedy_text_and_tokens(gemma3):
    p = PROMPTS["Q4"]
    r = workbench.generate(gemma3, p["text"], n=12)
    assert r.prompt_ids == p["token_ids"]  # BOS added, as llama.cpp does
    assert r.ids[:4] == p["greedy_ids"][:4]
    assert "100" in r.text or "degrees" in r.text
