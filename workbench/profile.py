"""Profiles that last: a recorded run saved as a directory, loaded back, compared.

    prof = run_profile("smollm2", "Hello", n=16, out="profiles/demo")
    prof = load_profile("profiles/demo")
    prof.table("op")

A profile directory holds `profile.json` (versioned schema: identity of machine and
model, settings, the generation, every op event), `trace.json` (Chrome trace /
Perfetto), `summary.md`, and PNG plots. Every file is written atomically.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic
from .instrument import analysis
from .instrument.trace import chrome_trace

SCHEMA = "workbench.profile"
SCHEMA_VERSION = 1


class ProfileError(ValueError):
    pass


def machine_info() -> dict:
    import numpy

    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from . import __version__

    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": numpy.__version__, "workbench": __version__}


def model_info(model) -> dict:
    from .models import REGISTRY, sha256_of

    g = model.gguf
    known = [m for m in REGISTRY.values() if m.size == g.file_size and Path(model.path).name == m.file]
    sha = known[0].sha256 if known else sha256_of(Path(model.path))
    return {"path": os.path.basename(model.path), "sha256": sha, "size": g.file_size,
            "architecture": model.config.arch, "name": g.get("general.name", ""),
            "n_layer": model.config.n_layer, "n_vocab": model.config.n_vocab}


def tensor_table(model) -> dict[str, dict]:
    return {t.name: {"type": t.qtype.name, "rows": t.rows, "row_bytes": t.row_bytes, "nbytes": t.nbytes,
                     "offset": t.offset} for t in model.gguf.tensors.values()}


@dataclass
class Profile:
    meta: dict
    events: list[dict]
    generation: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    path: Path | None = None

    def table(self, by: str = "op", phase: str | None = None) -> list[dict]:
        return analysis.table(self.events, by, phase)

    def touch(self) -> list[dict]:
        return analysis.logical_touch(self.events, self.tensors)

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "meta": self.meta, "generation": self.generation,
                "tensors": self.tensors, "events": self.events}

    def summary_text(self) -> str:
        g, m = self.generation, self.meta
        lines = [f"# Profile: {m['model']['name']} ({m['model']['path']}), backend {m['settings']['backend']}", ""]
        if g:
            lines += [f"Prompt: {g['prompt_tokens']} tokens at {g['prompt_tokens_per_s']:.1f} tok/s; generated "
                      f"{g['generated_tokens']} at {g['decode_tokens_per_s']:.1f} tok/s (recording on).", "",
                      "Text: " + repr(g.get("text", "")), ""]
        lines += [f"Machine: {m['machine']['cpu']}, {m['machine']['cores']} cores. "
                  f"Recorder overhead: {m.get('recorder_overhead_ms', 0):.1f} ms over {len(self.events)} op events.", ""]
        for phase in ("prefill", "decode"):
            rows = self.table("op", phase)
            if rows:
                lines += [f"## Ops by kind, {phase}", "", analysis.format_table(rows, 12), ""]
        touch = self.touch()
        if touch:
            tot = sum(t["nbytes"] for t in touch)
            tb = sum(t["touched_bytes"] for t in touch)
            partial = [t for t in touch if 0 < t["rows_touched"] < t["rows"]]
            lines += ["## Weights touched (logical)", "",
                      f"{tb / 1e6:.1f} MB of {tot / 1e6:.1f} MB of tensor data was read at least once "
                      f"({100 * tb / tot:.1f} %). Partly read tensors: "
                      + (", ".join(f"{t['tensor']} ({t['rows_touched']} of {t['rows']} rows)" for t in partial) or "none")
                      + ".", ""]
        return "\n".join(lines)

    def save(self, out: str | os.PathLike) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out / "profile.json", self.to_json())
        atomic.write_json(out / "trace.json", chrome_trace(self.events))
        atomic.write_text(out / "summary.md", self.summary_text() + "\n")
        self.path = out
        return out


def load_profile(path: str | os.PathLike) -> Profile:
    p = Path(path)
    f = p / "profile.json" if p.is_dir() else p
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise ProfileError(f"{f}: cannot read a profile ({e})") from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise ProfileError(f"{f}: not a workbench profile")
    if d.get("version") != SCHEMA_VERSION:
        raise ProfileError(f"{f}: profile schema version {d.get('version')} is not supported "
                           f"(this workbench reads version {SCHEMA_VERSION})")
    return Profile(d["meta"], d["events"], d.get("generation", {}), d.get("tensors", {}), f.parent)


def run_profile(model, prompt: str, n: int = 16, backend: str = "numpy", weight_cache: str = "none",
                device: str | None = None, out: str | os.PathLike | None = None, chat: bool = False,
                faults: bool = True, touch: bool = True) -> Profile:
    """Load `model`, generate `n` tokens after `prompt` with the recorder on, and save."""
    from .generate import generate
    from .instrument.recorder import record
    from .model import load

    m = model if hasattr(model, "ops") else load(model, backend=backend, weight_cache=weight_cache, device=device)
    try:
        with record(m, faults=faults, touch=touch) as rec:
            r = generate(m, prompt, n=n, chat=chat)
        events = [e.to_dict() for e in rec.events]
        meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), "model": model_info(m),
                "settings": {"backend": backend, "weight_cache": weight_cache, "device": device, "n": n,
                             "chat": chat, "faults": faults, "touch": touch, "prompt": prompt},
                "load_seconds": m.load_seconds, "recorder_overhead_ms": rec.overhead_ns / 1e6}
        prof = Profile(meta, events, r.to_dict(), tensor_table(m))
    finally:
        if m is not model:
            m.close()
    if out is not None:
        prof.save(out)
    return prof
