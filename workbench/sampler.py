"""Sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded.

The order follows llama.cpp's default chain: penalties -> top-k -> top-p -> min-p ->
temperature -> draw. Temperature 0 is greedy (argmax of the raw logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplerSettings:
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


class Sampler:
    def __init__(self, settings: SamplerSettings | None = None, **kw):
        self.s = settings or SamplerSettings(**kw)
        self.rng = np.random.default_rng(self.s.seed)

    def __call__(self, logits: np.ndarray, history: list[int] = ()) -> int:
        s = self.s
        logits = np.asarray(logits, dtype=np.float32).reshape(-1)
        if s.repeat_penalty != 1.0 and history and s.repeat_last_n:
            logits = logits.copy()
            recent = np.unique(np.asarray(history[-s.repeat_last_n:], dtype=np.int64))
            vals = logits[recent]
            logits[recent] = np.where(vals > 0, vals / s.repeat_penalty, vals * s.repeat_penalty)
        if s.temperature == 0:
            return int(np.argmax(logits))
        ids = np.argsort(-logits, kind="stable")
        if s.top_k:
            ids = ids[: s.top_k]
        z = logits[ids].astype(np.float64)
        p = np.exp(z - z[0])
        p /= p.sum()
        if s.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), s.top_p) + 1)
            ids, z = ids[:keep], z[:keep]
        if s.min_p > 0:
            keep = z >= z[0] + np.log(s.min_p)  # p_i >= min_p * p_max
            ids, z = ids[keep], z[keep]
        p = np.exp((z - z[0]) / s.temperature)
        return int(ids[self.rng.choice(len(ids), p=p / p.sum())])
