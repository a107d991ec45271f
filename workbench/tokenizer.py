"""Tokenizers built from a GGUF file's own vocabulary, reproducing llama.cpp's token ids.

    tok = Tokenizer.from_metadata(open_gguf(path).metadata)
    ids = tok.encode("<|im_start|>user\\nHi<|im_end|>\\n")     # special-token text parsed, as llama.cpp
    text = tok.decode(ids)

Two vocabulary types, chosen by `tokenizer.ggml.model`:

* ``gpt2``: byte-level BPE (SmolLM2, Llama 3, Qwen 2, ...): the pre-tokenizer that
  ``tokenizer.ggml.pre`` names (Hugging Face ``tokenizers``' regexes and byte map) splits the text
  into words, then llama.cpp's ``llm_tokenizer_bpe`` in pure Python merges each word's symbols by
  merge rank (building it is two dicts, ~10 ms for a 49k vocabulary).
* ``llama``: SentencePiece-style (Gemma 3, Llama 2, ...). llama.cpp's ``llm_tokenizer_spm`` in
  pure Python: spaces become ``▁``, adjacent symbols merge while their concatenation is a
  vocabulary entry, highest score first, and what is left that is not a token falls back to
  ``<0xNN>`` byte tokens.

What follows llama.cpp (``src/llama-vocab.cpp``, checked at commit 0c1e57098) exactly:

* Special-token splitting (``tokenizer_st_partition``): control, user-defined and unknown tokens
  are cut out of the raw text first, longest token text first, each over the whole text. With
  ``parse_special=False`` control and unknown tokens are left as text, but *user-defined* tokens
  (Gemma's whitespace runs, ``"\\n"``, HTML tags) are still cut out, as llama.cpp does.
* Token attributes, including llama.cpp's name-based overrides: tokens such as ``<|im_end|>`` or
  ``</s>`` that it lists as end-of-generation become control tokens.
* ``eog_ids``: eos, eot, eom, the FIM pad/repo/separator tokens and tokens named like
  ``<|im_end|>``, ``<end_of_turn>``, ``<|endoftext|>``, ``</s>``, ...
* ``piece``/``decode``: ``llama_token_to_piece`` and ``llama_detokenize`` (leading-space removal
  for ``add_space_prefix`` vocabularies and the ``clean_spaces`` pass of some BPE pre-tokenizers).

Where llama.cpp's choice depends on the iteration order of a ``std::unordered_map`` (which of
several eot-looking or FIM-looking tokens becomes *the* eot/FIM id) the lowest id is taken; the
set of end-of-generation ids does not depend on it except for FIM tokens (one per kind).
"""

from __future__ import annotations

import codecs
import heapq
import operator
import re
from typing import Any, Iterable

import numpy as np

__all__ = ["Tokenizer", "StreamDecoder", "SUPPORTED_MODELS", "SUPPORTED_PRE"]

# llama.h: enum llama_token_type (the GGUF's tokenizer.ggml.token_type values)
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)

# llama.h: enum llama_token_attr (bit flags)
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_NORMALIZED = 1 << 6
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
ATTR_SINGLE_WORD = 1 << 9

_TYPE_TO_ATTR = np.array([ATTR_UNDEFINED, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED,
                          ATTR_UNUSED, ATTR_BYTE], dtype=np.int32)
_ATTR_SPECIAL = ATTR_UNKNOWN | ATTR_CONTROL              # hidden by token_to_piece(special=false)
_ATTR_PARTITION = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN   # cut out of raw text first

SPACE_MARK = "\u2581"  # ▁

# --- BPE pre-tokenizers -------------------------------------------------------------------------
# The regexes are llama.cpp's (llm_tokenizer_bpe in src/llama-vocab.cpp); in llama.cpp the gpt2,
# llama3 and qwen2 ones run as hand-written splitters (unicode.cpp) equivalent to these regexes.

_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_RE_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_RE_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_RE_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", _RE_GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]

# family -> regexes applied in sequence (each splits the pieces the previous one left, keeping
# the text between matches), then GPT-2 byte encoding. "gpt2" uses ByteLevel's own regex.
_PRE_FAMILIES: dict[str, list[str]] = {
    "default": _RE_DEFAULT,
    "gpt2": [_RE_GPT2],
    "smollm": [r"\p{N}", _RE_GPT2],
    "llama3": [_RE_LLAMA3],
    "qwen2": [_RE_QWEN2],
}

# tokenizer.ggml.pre -> (family, clean_spaces, ignore_merges, add_bos default), as llama.cpp's
# llama_vocab::impl::load sets them. Only pre-tokenizers whose whole behaviour is covered here.
_PRE_TABLE: dict[str, tuple[str, bool, bool, bool]] = {
    "default": ("default", True, False, False),
    # LLAMA_VOCAB_PRE_TYPE_GPT2 / MPT / OLMO (no other flags)
    "gpt-2": ("gpt2", True, False, False),
    "gpt2": ("gpt2", True, False, False),          # alias accepted here (llama.cpp spells it gpt-2)
    "phi-2": ("gpt2", True, False, False),
    "mpt": ("gpt2", True, False, False),
    "olmo": ("gpt2", True, False, False),
    # LLAMA_VOCAB_PRE_TYPE_LLAMA3: ignore_merges, add_bos
    "llama3": ("llama3", True, True, True),
    "llama-v3": ("llama3", True, True, True),
    "llama-bpe": ("llama3", True, True, True),
    "falcon3": ("llama3", True, True, True),
    # LLAMA_VOCAB_PRE_TYPE_QWEN2 / STABLELM2
    "qwen2": ("qwen2", False, False, False),
    "deepseek-r1-qwen": ("qwen2", False, False, False),
    "megrez": ("qwen2", True, False, False),
    "stablelm2": ("qwen2", True, False, False),
    # LLAMA_VOCAB_PRE_TYPE_SMOLLM / STARCODER / REFACT / COMMAND_R / CODESHELL ("\p{N}" + gpt2)
    "smollm": ("smollm", False, False, False),
    "starcoder": ("smollm", True, False, False),
    "refact": ("smollm", True, False, False),
    "command-r": ("smollm", False, False, False),
    "codeshell": ("smollm", True, False, False),
}

SUPPORTED_MODELS = ("gpt2", "llama")
SUPPORTED_PRE = tuple(_PRE_TABLE)

# Token texts llama.cpp recognises by name (llama_vocab::impl::load).
_EOT_NAMES = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_NAMES = ("<|eom_id|>",)
_FIM_PRE_NAMES = ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                  "<|code_prefix|>", "<|prefix|>")
_FIM_SUF_NAMES = ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                  "<|code_suffix|>", "<|suffix|>")
_FIM_MID_NAMES = ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                  "<|code_middle|>", "<|middle|>")
_FIM_PAD_NAMES = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_NAMES = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP_NAMES = ("<|file_sep|>",)
_EOG_NAMES = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (llama.cpp unicode_byte_to_utf8)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_BYTE_TO_UNICODE = _bytes_to_unicode()
_UNICODE_TO_BYTE = {c: b for b, c in _BYTE_TO_UNICODE.items()}

# llama_detokenize's clean_spaces passes, as byte regexes (equivalent to its in-place loops)
_CLEAN1 = re.compile(rb" (?=[?!.,])")
_CLEAN2 = re.compile(rb" ' ")
_CLEAN3 = re.compile(rb" (?='(?:[sm]|re|ve))")


def _clean_spaces(b: bytes) -> bytes:
    b = _CLEAN1.sub(b"", b)
    b = _CLEAN2.sub(b"'", b)
    return _CLEAN3.sub(b"", b)


def _meta_int(meta: dict, key: str) -> int | None:
    v = meta.get(key)
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError(f"metadata {key} should be an integer, got {v!r}") from None


def _meta_bool(meta: dict, key: str) -> bool | None:
    v = meta.get(key)
    return None if v is None else bool(v)


class Tokenizer:
    """A GGUF vocabulary with llama.cpp's tokenization rules. Build it with `from_metadata`."""

    model: str            # tokenizer.ggml.model
    pre: str              # tokenizer.ggml.pre ("" if absent)
    tokens: list[str]     # vocabulary texts, by id
    n_vocab: int
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    unk_id: int | None
    pad_id: int | None
    eog_ids: frozenset[int]
    add_bos: bool         # add BOS by default (tokenizer.ggml.add_bos_token, else llama.cpp's default)
    add_eos: bool
    add_space_prefix: bool
    clean_spaces: bool

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "Tokenizer":
        """Build the tokenizer named by `tokenizer.ggml.model` from a GGUF metadata dict."""
        model = meta.get("tokenizer.ggml.model")
        if model is None:
            raise ValueError("GGUF metadata has no tokenizer.ggml.model; supported tokenizer models: "
                             + ", ".join(SUPPORTED_MODELS))
        if model == "gpt2":
            return _BPETokenizer(meta)
        if model == "llama":
            return _SPMTokenizer(meta)
        raise ValueError(f"unsupported tokenizer.ggml.model {model!r}; supported: {', '.join(SUPPORTED_MODELS)}")

    @classmethod
    def from_gguf(cls, path) -> "Tokenizer":
        from .gguf import open_gguf

        g = open_gguf(path)
        try:
            return cls.from_metadata(g.metadata)
        finally:
            g.close()

    def __init__(self, meta: dict[str, Any], model: str, defaults: dict[str, int | None],
                 add_bos: bool, add_eos: bool, add_space_prefix: bool, clean_spaces: bool):
        self.model = model
        self.pre = str(meta.get("tokenizer.ggml.pre") or "")
        tokens = meta.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise ValueError("GGUF metadata has no tokenizer.ggml.tokens")
        tokens = list(tokens)
        n = len(tokens)
        if n == 0:
            raise ValueError("tokenizer.ggml.tokens is empty")
        if "" in tokens:  # llama.cpp renames empty entries
            tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.tokens = tokens
        self.n_vocab = n
        self._tok2id: dict[str, int] = dict(zip(tokens, range(n)))
        if len(self._tok2id) != n:
            raise ValueError(f"tokenizer.ggml.tokens has {n - len(self._tok2id)} duplicate entries "
                             "(llama.cpp refuses such a vocabulary)")

        tt = meta.get("tokenizer.ggml.token_type")
        if tt is None:
            attr = np.full(n, ATTR_NORMAL, dtype=np.int32)
        else:
            tt = np.asarray(tt)
            if len(tt) < n:
                raise ValueError(f"tokenizer.ggml.token_type has {len(tt)} entries for {n} tokens")
            tt = tt[:n].astype(np.int64)
            attr = np.where((tt >= 0) & (tt < len(_TYPE_TO_ATTR)), _TYPE_TO_ATTR[np.clip(tt, 0, 6)], ATTR_UNDEFINED)
            attr = attr.astype(np.int32)
        self._attr = attr

        # special ids: model defaults, disabled when out of range, overridden by metadata
        ids: dict[str, int | None] = {}
        for name, default in defaults.items():
            ids[name] = default if default is not None and 0 <= default < n else None
        keys = {"bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "eom": "eom_token_id",
                "unk": "unknown_token_id", "sep": "seperator_token_id", "pad": "padding_token_id",
                "mask": "mask_token_id", "fim_pre": "fim_pre_token_id", "fim_suf": "fim_suf_token_id",
                "fim_mid": "fim_mid_token_id", "fim_pad": "fim_pad_token_id", "fim_rep": "fim_rep_token_id",
                "fim_sep": "fim_sep_token_id", "fim_pre_old": "prefix_token_id", "fim_suf_old": "suffix_token_id",
                "fim_mid_old": "middle_token_id"}
        for name, key in keys.items():
            v = _meta_int(meta, "tokenizer.ggml." + key)
            target = name.replace("_old", "")
            ids.setdefault(target, None)
            if v is not None and 0 <= v < n:
                ids[target] = v

        b = _meta_bool(meta, "tokenizer.ggml.add_bos_token")
        self.add_bos = add_bos if b is None else b
        b = _meta_bool(meta, "tokenizer.ggml.add_eos_token")
        self.add_eos = add_eos if b is None else b
        b = _meta_bool(meta, "tokenizer.ggml.add_space_prefix")
        self.add_space_prefix = add_space_prefix if b is None else b
        self.clean_spaces = clean_spaces

        self._detect_special(ids, meta)
        self.bos_id = ids.get("bos")
        self.eos_id = ids.get("eos")
        self.eot_id = ids.get("eot")
        self.unk_id = ids.get("unk")
        self.pad_id = ids.get("pad")
        self._ids = ids

        # tokens cut out of raw text before tokenizing: longest text (in bytes) first; ties by id
        special = np.nonzero(self._attr & _ATTR_PARTITION)[0].tolist()
        special.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
        self._special: list[int] = special
        self._special_rank = {i: r for r, i in enumerate(special)}
        self._special_tree: list | None = None   # prefix groups for finding candidates, grown lazily
        self._pieces: list[bytes | None] = [None] * n

    def _detect_special(self, ids: dict[str, int | None], meta: dict) -> None:
        """llama.cpp's name-based detection of eot/eom/FIM tokens, EOG set and attribute overrides."""
        t2i = self._tok2id
        attr = self._attr

        def find(names) -> list[int]:
            return sorted(t2i[s] for s in names if s in t2i)

        def mark_control(i: int) -> None:
            attr[i] |= ATTR_CONTROL

        for kind, names in (("eot", _EOT_NAMES), ("eom", _EOM_NAMES), ("fim_pre", _FIM_PRE_NAMES),
                            ("fim_suf", _FIM_SUF_NAMES), ("fim_mid", _FIM_MID_NAMES), ("fim_pad", _FIM_PAD_NAMES),
                            ("fim_rep", _FIM_REP_NAMES), ("fim_sep", _FIM_SEP_NAMES)):
            if ids.get(kind) is None:
                found = find(names)
                if found:
                    # llama.cpp takes the first in unordered_map order and marks only that one
                    ids[kind] = found[0]
                    mark_control(found[0])

        eog: set[int] = set()
        for kind in ("fim_pad", "fim_rep", "fim_sep"):
            if ids.get(kind) is not None:
                eog.add(ids[kind])
        for i in find(_EOG_NAMES):
            eog.add(i)
            mark_control(i)
        # gpt-oss hack: always render these
        for s in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
            if s in t2i:
                attr[t2i[s]] = ATTR_USER_DEFINED
        for kind in ("eos", "eot", "eom"):
            if ids.get(kind) is not None:
                eog.add(ids[kind])

        texts = {self.tokens[i]: i for i in eog}
        if "<|return|>" in texts or "<|call|>" in texts or "<|calls|>" in texts:
            has_call = "<|call|>" in texts or "<|calls|>" in texts
            if "<|end|>" in texts and ((("<|return|>" in texts) and has_call) or (has_call and "<|flush|>" in texts)):
                end_id = texts["<|end|>"]
                eog.discard(end_id)
                attr[end_id] = ATTR_USER_DEFINED
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(texts["</s>"])
            attr[texts["</s>"]] = ATTR_NORMAL
        self.eog_ids = frozenset(int(i) for i in eog)

        # control tokens whose text says "unused"
        ctl = np.nonzero(attr & ATTR_CONTROL)[0]
        for i in ctl.tolist():
            if "unused" in self.tokens[i]:
                attr[i] |= ATTR_UNUSED

        # per-model attributes (names as llama.cpp matches them)
        name = str(meta.get("general.name") or "").lower()
        pre = self.pre
        arch = str(meta.get("general.architecture") or "")
        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            if "<mask>" in t2i:
                attr[t2i["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in np.nonzero(attr & _ATTR_PARTITION)[0].tolist():
                attr[i] |= ATTR_RSTRIP
            if "</s>" in t2i:
                attr[t2i["</s>"]] |= ATTR_RSTRIP
            for s in ("<unk>", "<s>", "<|endoftext|>"):
                if s in t2i:
                    attr[t2i[s]] &= ~ATTR_RSTRIP
        elif "modern-bert" in name:
            if "[MASK]" in t2i:
                attr[t2i["[MASK]"]] |= ATTR_LSTRIP

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return self.n_vocab

    def __repr__(self) -> str:
        return (f"<Tokenizer {self.model}/{self.pre or '-'} n_vocab={self.n_vocab} bos={self.bos_id} "
                f"eos={self.eos_id} eog={sorted(self.eog_ids)}>")

    def _check_id(self, i) -> int:
        try:
            j = operator.index(i)
        except TypeError:
            raise TypeError(f"token ids are integers, got {type(i).__name__} {i!r}") from None
        if not 0 <= j < self.n_vocab:
            raise ValueError(f"token id {j} is out of range: this vocabulary has ids 0..{self.n_vocab - 1}")
        return j

    def token_attr(self, id: int) -> int:
        """llama.cpp's attribute bits for a token (ATTR_* constants of this module)."""
        return int(self._attr[self._check_id(id)])

    def is_special(self, id: int) -> bool:
        """True for control and unknown tokens: what `decode(skip_special=True)` leaves out.

        User-defined tokens (Gemma's whitespace runs and HTML tags) are matched in raw text like
        specials but are ordinary text, so they are not special here."""
        return bool(self._attr[self._check_id(id)] & _ATTR_SPECIAL)

    def is_eog(self, id: int) -> bool:
        return id in self.eog_ids

    def token_id(self, text: str) -> int | None:
        """The id of a vocabulary entry given its exact stored text, or None."""
        return self._tok2id.get(text)

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, parse_special: bool = True, add_bos: bool | None = None,
               add_eos: bool | None = None) -> list[int]:
        """Token ids of `text`, as llama_tokenize(text, add_special, parse_special).

        add_bos/add_eos None follow the GGUF (tokenizer.ggml.add_bos_token / add_eos_token, else
        llama.cpp's defaults); llama_tokenize(add_special=false) is add_bos=False, add_eos=False."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not valid Unicode (lone surrogate at {e.start})") from None
        add_bos = self.add_bos if add_bos is None else add_bos
        add_eos = self.add_eos if add_eos is None else add_eos
        out: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True but this vocabulary has no BOS token")
            out.append(self.bos_id)
        fragments = self._partition(text, parse_special) if text else []
        self._encode_fragments(fragments, out)
        if add_eos:
            if self.eos_id is None:
                raise ValueError("add_eos=True but this vocabulary has no EOS token")
            out.append(self.eos_id)
        return out

    def _encode_fragments(self, fragments: list[str | int], out: list[int]) -> None:
        raise NotImplementedError

    def _candidates(self, text: str, parse_special: bool) -> list[int]:
        """Special tokens whose text occurs in `text`, in partition order (exact: a token occurs in
        a text only if its prefixes do, so groups are tested by prefix before their members)."""
        root = self._special_tree
        if root is None:
            root = self._special_tree = [self._special, 0, None]
        tokens = self.tokens
        found: list[int] = []
        stack = [root]
        while stack:
            node = stack.pop()
            ids, depth, children = node
            if len(ids) <= 8:
                found.extend(i for i in ids if tokens[i] in text)
                continue
            if children is None:   # split the group by one more character, on first visit
                direct: list[int] = []
                groups: dict[str, list[int]] = {}
                for i in ids:
                    t = tokens[i]
                    if len(t) <= depth + 1:
                        direct.append(i)
                    else:
                        groups.setdefault(t[:depth + 1], []).append(i)
                children = node[2] = (direct, [(k, [v, depth + 1, None]) for k, v in groups.items()])
            direct, groups = children
            found.extend(i for i in direct if tokens[i] in text)
            stack.extend(sub for key, sub in groups if key in text)
        if not parse_special:
            attr = self._attr
            found = [i for i in found if not attr[i] & (ATTR_CONTROL | ATTR_UNKNOWN)]
        rank = self._special_rank
        found.sort(key=rank.__getitem__)
        return found

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """llama.cpp tokenizer_st_partition: raw text fragments (str) and special token ids (int)."""
        frags: list[str | int] = [text]
        attr = self._attr
        for sid in self._candidates(text, parse_special):
            stext = self.tokens[sid]
            a = int(attr[sid])
            lstrip = bool(a & ATTR_LSTRIP)
            rstrip = bool(a & ATTR_RSTRIP)
            new: list[str | int] = []
            changed = False
            for frag in frags:
                if isinstance(frag, int) or stext not in frag:
                    new.append(frag)
                    continue
                changed = True
                pos = 0
                n = len(frag)
                while True:
                    m = frag.find(stext, pos)
                    if m < 0:
                        break
                    left = frag[pos:m]
                    if lstrip:
                        left = _rstrip_c_space(left)
                    if left:
                        new.append(left)
                    new.append(sid)
                    pos = m + len(stext)
                    if rstrip:
                        while pos < n and frag[pos] in _C_SPACE:
                            pos += 1
                    if pos >= n:
                        break
                if pos < n:
                    new.append(frag[pos:])
            if changed:
                frags = new
        return frags

    # ------------------------------------------------------------------ decoding

    def _piece_text(self, i: int) -> bytes:
        """The piece as llama.cpp's token_to_piece(special=true) builds it: special and
        user-defined tokens as written, byte tokens as their byte, normal tokens decoded the
        vocabulary type's way (`_normal_text`)."""
        a = int(self._attr[i])
        text = self.tokens[i]
        if a & (_ATTR_SPECIAL | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if a & ATTR_NORMAL:
            return self._normal_text(text)
        if a & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def _normal_text(self, text: str) -> bytes:
        raise NotImplementedError

    def piece_bytes(self, id: int, special: bool = True) -> bytes:
        """llama_token_to_piece(id, lstrip=0, special) as bytes (a piece may hold part of a character)."""
        i = self._check_id(id)
        if not special and self._attr[i] & _ATTR_SPECIAL:
            return b""
        p = self._pieces[i]
        if p is None:
            p = self._pieces[i] = self._piece_text(i)
        return p

    def piece(self, id: int) -> str:
        """The token's text as llama.cpp's token_to_piece(special=true) shows it; bytes that are not
        a whole UTF-8 character (byte tokens, parts of emoji) show as U+FFFD."""
        return self.piece_bytes(id).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        """llama_detokenize(ids, remove_special=skip_special, unparse_special=not skip_special)."""
        ids = [self._check_id(i) for i in ids]
        if skip_special:
            if self.add_bos and ids and ids[0] == self.bos_id:
                ids = ids[1:]
                remove_space = False
            else:
                remove_space = self.add_space_prefix
            if self.add_eos and ids and ids[-1] == self.eos_id:
                ids = ids[:-1]
        else:
            remove_space = self.add_space_prefix
        parts = [self.piece_bytes(i, special=not skip_special) for i in ids]
        if remove_space and parts and parts[0].startswith(b" "):
            parts[0] = parts[0][1:]
        out = b"".join(parts)
        if self.clean_spaces:
            out = _clean_spaces(out)
        return out

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids` as llama_detokenize gives it. skip_special=False renders control tokens
        (llama.cpp's unparse_special=true, remove_special=false); True drops them and a leading
        BOS / trailing EOS that the vocabulary adds. Invalid UTF-8 becomes U+FFFD.
        Raises ValueError for an id outside 0..n_vocab-1."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")


_C_SPACE = " \t\n\v\f\r"   # C isspace() in the "C" locale


def _rstrip_c_space(s: str) -> str:
    return s.rstrip(_C_SPACE)


def _merge(sym: list[str], table: dict[str, int], sep: str = "", value: list | None = None) -> list[str]:
    """llama.cpp's merge loop (llm_tokenizer_spm_session and llm_tokenizer_bpe_session).

    A pair of adjacent symbols is ranked by `table[left + sep + right]` (mapped through
    `value` when given; a pair not in the table never merges); the lowest-ranked pair merges,
    leftmost of equals, until no pair is ranked. Returns the symbols left, in order. A heap of
    candidate pairs, each checked when popped: a pair is stale once either symbol grew (a
    symbol's text is its span of the input, so the same text at the same start is the same
    symbol)."""
    n = len(sym)
    if n < 2:
        return sym
    get = table.get
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap = []   # (rank, left index, left text, right text)
    for i in range(n - 1):
        k = get(sym[i] + sep + sym[i + 1])
        if k is not None:
            heap.append((k if value is None else value[k], i, sym[i], sym[i + 1]))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        _, l, a, b = pop(heap)
        r = nxt[l]
        if r < 0 or sym[l] != a or sym[r] != b:
            continue
        sym[l] = s = a + b
        sym[r] = ""
        nr = nxt[l] = nxt[r]
        if nr >= 0:
            prv[nr] = l
            k = get(s + sep + sym[nr])
            if k is not None:
                push(heap, (k if value is None else value[k], l, s, sym[nr]))
        p = prv[l]
        if p >= 0:
            k = get(sym[p] + sep + s)
            if k is not None:
                push(heap, (k if value is None else value[k], p, sym[p], s))
    out = []
    i = 0
    while i != -1:
        out.append(sym[i])
        i = nxt[i]
    return out


# ====================================================================== byte-level BPE (gpt2)


class _BPETokenizer(Tokenizer):
    def __init__(self, meta: dict[str, Any]):
        pre = meta.get("tokenizer.ggml.pre")
        pre = "default" if pre in (None, "") else str(pre)
        if pre not in _PRE_TABLE:
            raise ValueError(f"unsupported tokenizer.ggml.pre {pre!r} for tokenizer.ggml.model 'gpt2'; "
                             f"supported: {', '.join(SUPPORTED_PRE)}")
        family, clean_spaces, ignore_merges, add_bos = _PRE_TABLE[pre]
        super().__init__(meta, "gpt2", {"bos": 11, "eos": 11, "unk": None, "sep": None, "pad": None, "mask": None},
                         add_bos=add_bos, add_eos=False, add_space_prefix=False, clean_spaces=clean_spaces)
        self.pre = pre
        self.pre_family = family
        self.ignore_merges = ignore_merges
        merges = meta.get("tokenizer.ggml.merges")
        if merges is None:
            raise ValueError("tokenizer.ggml.model is 'gpt2' but the GGUF has no tokenizer.ggml.merges")
        # A merge's rank keyed by its own text "left right". llama.cpp splits a merge at its first
        # space after the first character; the symbols looked up never hold a space (byte-level
        # text writes it as "Ġ"), so `left + " " + right` finds exactly the merges it would.
        # Built from the end so that a repeated merge keeps its first rank, as llama.cpp's does.
        merges = list(merges)
        self._ranks: dict[str, int] = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        self._pre_tokenizer = _pre_tokenizer(family)
        self._words: dict[str, tuple[int, ...]] = {}   # word -> its ids (words recur in text)

    def _encode_fragments(self, fragments, out):
        words = self._words
        split = self._pre_tokenizer.pre_tokenize_str
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                continue
            for word, _ in split(frag):
                ids = words.get(word)
                if ids is None:
                    if len(words) >= _WORD_CACHE:
                        words.clear()
                    ids = words[word] = self._bpe(word)
                out.extend(ids)

    def _bpe(self, word: str) -> tuple[int, ...]:
        """llm_tokenizer_bpe_session::tokenize on one pre-tokenized word (byte-level text): its
        characters are symbols; the adjacent pair of lowest merge rank is merged, leftmost
        first, until no pair has a rank; a symbol that is not a token gives the tokens of its
        single ASCII characters (llama.cpp looks its bytes up one by one), or nothing."""
        get = self._tok2id.get
        if self.ignore_merges:
            t = get(word)
            if t is not None:
                return (t,)
        out = []
        for s in _merge(list(word), self._ranks, " "):
            t = get(s)
            if t is not None:
                out.append(t)
            else:
                # llama.cpp looks its bytes up one by one: only ASCII ones can be whole tokens
                out.extend(t for c in s if c < "\x80" and (t := get(c)) is not None)
        return tuple(out)

    def _normal_text(self, text: str) -> bytes:
        """Byte-level BPE: each character stands for one byte (llama_decode_text)."""
        out = bytearray()
        dec = _UNICODE_TO_BYTE
        for c in text:
            b = dec.get(c)
            if b is None:   # llama_decode_text's marker for a character outside the byte map
                out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
            else:
                out.append(b)
        return bytes(out)


_WORD_CACHE = 1 << 16   # words remembered per tokenizer (cleared when full)


def _pre_tokenizer(family: str):
    """The pre-tokenizer of a BPE family: its regexes, then GPT-2's byte-to-character map
    (Hugging Face ``tokenizers``, whose regex engine has the Unicode classes they use)."""
    try:
        from tokenizers import Regex, pre_tokenizers
    except ImportError as e:  # pragma: no cover
        raise ImportError("byte-level BPE vocabularies need the 'tokenizers' package") from e
    if family == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if family == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in _PRE_FAMILIES[family]]
    return pre_tokenizers.Sequence(splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# ====================================================================== SentencePiece style (llama)


class _SPMTokenizer(Tokenizer):
    def __init__(self, meta: dict[str, Any]):
        super().__init__(meta, "llama", {"bos": 1, "eos": 2, "unk": 0, "sep": None, "pad": None, "mask": None},
                         add_bos=True, add_eos=False, add_space_prefix=True, clean_spaces=False)
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None:
            self._scores_src = None
        else:
            scores = np.asarray(scores)
            if scores.dtype.kind not in "if":
                raise ValueError(f"tokenizer.ggml.scores has type {scores.dtype}, expected float32 or int32")
            if len(scores) < self.n_vocab:
                raise ValueError(f"tokenizer.ggml.scores has {len(scores)} entries for {self.n_vocab} tokens")
            self._scores_src = scores
        self._scores_list: list[float] | None = None
        self._byte_ids: dict[int, int] = {}

    @property
    def _neg_scores(self) -> list[float]:
        """Minus each token's score, as Python floats (made on first use: the merge loop ranks
        pairs lowest first)."""
        s = self._scores_list
        if s is None:
            if self._scores_src is None:
                s = [0.0] * self.n_vocab
            else:
                s = (-self._scores_src[: self.n_vocab].astype(np.float64)).tolist()
            self._scores_list = s
        return s

    def score(self, id: int) -> float:
        return -self._neg_scores[self._check_id(id)]

    def _byte_token(self, b: int) -> int:
        """llama_vocab::byte_to_token for SPM: <0xNN>, else the byte itself as a token."""
        t = self._byte_ids.get(b)
        if t is None:
            t = self._tok2id.get(f"<0x{b:02X}>")
            if t is None:
                t = self._tok2id.get(chr(b)) if b < 0x80 else None
                if t is None:
                    raise ValueError(f"byte 0x{b:02X} has no <0x{b:02X}> token in this vocabulary")
            self._byte_ids[b] = t
        return t

    def _encode_fragments(self, fragments, out):
        prev_special = True
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.add_space_prefix and prev_special:
                frag = " " + frag
            self._spm(frag.replace(" ", SPACE_MARK), out)
            prev_special = False

    def _spm(self, text: str, out: list[int]) -> None:
        """llm_tokenizer_spm_session::tokenize on one fragment (whitespace already escaped):
        adjacent symbols merge while their concatenation is a token, highest score first;
        what is left that is not a token falls back to byte tokens."""
        get = self._tok2id.get
        for s in _merge(list(text), self._tok2id, "", self._neg_scores):   # highest score first
            t = get(s)
            if t is not None:
                out.append(t)
            else:
                out.extend(self._byte_token(b) for b in s.encode("utf-8"))

    def _normal_text(self, text: str) -> bytes:
        """SentencePiece: ▁ marks a space."""
        return text.replace(SPACE_MARK, " ").encode("utf-8")


# ====================================================================== streaming


class StreamDecoder:
    """Turns token ids into text as they arrive, as `Tokenizer.decode` would render the whole
    sequence. `push(id)` returns the text that became printable (possibly ""), holding back an
    incomplete UTF-8 sequence (an emoji split over byte tokens) until it is complete; `flush()`
    returns what is left at the end (an unfinished sequence as U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self.tok = tokenizer
        self.skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._remove_space = tokenizer.add_space_prefix
        self._clean = tokenizer.clean_spaces
        self._pending = b""         # clean_spaces only: raw bytes not yet cleaned and passed on

    def push(self, id: int) -> str:
        tok = self.tok
        i = tok._check_id(id)
        if self._first:
            self._first = False
            if self.skip_special and tok.add_bos and i == tok.bos_id:
                self._remove_space = False
                return ""
        b = tok.piece_bytes(i, special=not self.skip_special)
        if self._remove_space:
            self._remove_space = False
            if b.startswith(b" "):
                b = b[1:]
        if not self._clean:
            return self._utf8.decode(b)
        # clean_spaces deletes a space depending on the few bytes around it; text up to a point
        # whose last 3 bytes hold no space or apostrophe cleans the same whatever follows.
        p = self._pending + b
        c = _clean_cut(p)
        self._pending = p[c:]
        return self._utf8.decode(_clean_spaces(p[:c])) if c else ""

    def push_many(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def flush(self) -> str:
        out = b""
        if self._clean and self._pending:
            out = _clean_spaces(self._pending)
            self._pending = b""
        return self._utf8.decode(out, final=True)


def _clean_cut(p: bytes) -> int:
    for c in range(len(p), 2, -1):
        w = p[c - 3:c]
        if b" " not in w and b"'" not in w:
            return c
    return 0
