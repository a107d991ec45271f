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
PROFILE_FILES = ("profile.json", "trace.json", "summary.md")


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
    from . import __version__, heap

    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": numpy.__version__, "workbench": __version__,
            "malloc": heap.state()}


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


def _pack(mask) -> str:
    import base64

    import numpy as np

    return base64.b64encode(np.packbits(mask).tobytes()).decode("ascii")


def _unpack(s: str, n: int):
    import base64

    import numpy as np

    return np.unpackbits(np.frombuffer(base64.b64decode(s), np.uint8), count=n).astype(bool)


@dataclass
class Profile:
    meta: dict
    events: list[dict]
    generation: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    residency: dict = field(default_factory=dict)  # page_size, n_pages, samples (bool masks), fault_around
    path: Path | None = None

    def touch_layers(self) -> dict:
        r = self.residency
        return analysis.touch_layers(self.events, self.tensors, r.get("samples", []), r.get("page_size", 4096),
                                     r.get("fault_around"))

    def table(self, by: str = "op", phase: str | None = None) -> list[dict]:
        return analysis.table(self.events, by, phase)

    def diff(self, other: "Profile", by: str = "op", phase: str | None = None) -> list[dict]:
        """This profile (A) beside `other` (B), group by group, with the ratio B/A per occurrence."""
        return analysis.diff(self.events, other.events, by, phase)

    def touch(self) -> list[dict]:
        return analysis.logical_touch(self.events, self.tensors)

    def to_json(self) -> dict:
        res = dict(self.residency)
        if "samples" in res:  # page masks as base64 bit strings
            res["samples"] = [{**s, "mapped": _pack(s["mapped"]), "cached": _pack(s["cached"])} for s in res["samples"]]
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "meta": self.meta, "generation": self.generation,
                "tensors": self.tensors, "residency": res, "events": self.events}

    def summary_text(self) -> str:
        g, m = self.generation, self.meta
        lines = [f"# Profile: {m['model']['name']} ({m['model']['path']}), backend {m['settings']['backend']}", ""]
        if g:
            lines += [f"Prompt: {g['prompt_tokens']} tokens at {g['prompt_tokens_per_s']:.1f} tok/s; generated "
                      f"{g['generated_tokens']} at {g['decode_tokens_per_s']:.1f} tok/s (recording on).", "",
                      "Text: " + repr(g.get("text", "")), ""]
        lines += [f"Machine: {m['machine']['cpu']}, {m['machine']['cores']} cores. "
                  f"Recorder overhead: {m.get('recorder_overhead_ms', 0):.1f} ms over {len(self.events)} op events.", ""]
        unfused = [name for name, fused in (m.get("fused_while_recording") or {}).items() if not fused]
        if unfused:
            lines += [f"Fused ops ({', '.join(unfused)}: q/k/v and gate/up as one GEMM or launch, add + norm, ...) ran "
                      "one at a time while recording, so that each op's time is its own: without a recorder "
                      "they run fused and faster (`workbench overhead` measures the difference).", ""]
        load = m.get("load_seconds") or {}
        if load:
            wc, where = m.get("weight_cache") or {}, ""
            store = wc.get("store")
            if store == "memory":
                where = f"; the {wc['bytes'] / 1e6:.0f} MB float32 weight cache built in memory"
            elif isinstance(store, dict):
                where = (f"; the {wc['bytes'] / 1e6:.0f} MB float32 weight cache "
                         f"{'written to' if store.get('built_now') else 'mapped from'} "
                         f"{os.path.basename(store.get('path') or '')} (in the f32 store)")
            lines += [f"Load: {load.get('total', 0):.2f} s (parse {load.get('map_and_parse', 0):.2f}, tokenizer and "
                      f"weights {load.get('tokenizer_and_weights', 0):.2f}, backend {load.get('backend_prepare', 0):.2f})"
                      f"{where}.", ""]
        for phase in ("prefill", "decode"):
            rows = self.table("op", phase)
            if rows:
                lines += [f"## Ops by kind, {phase}", "", analysis.format_table(rows, 12), ""]
        if self.residency.get("samples"):
            lines += self._touch_layers_text()
        touch = self.touch()
        if touch:
            tot = sum(t["nbytes"] for t in touch)
            tb = sum(t["touched_bytes"] for t in touch)
            partial = [t for t in touch if 0 < t["rows_touched"] < t["rows"]]
            lines += ["## Weights touched (logical)", "",
                      f"{tb / 1e6:.1f} MB of {tot / 1e6:.1f} MB of tensor data was read at least once "
                      f"({100 * tb / tot:.1f} %). Partly read tensors: "
                      + (", ".join(f"{t['tensor']} ({t['rows_touched']} of {t['rows']} rows)" for t in partial) or "none")
                      + "."]
            lines += [f"- {op} read {len(rows)} of {self.tensors[name]['rows']} rows of {name} "
                      f"({len(rows) * self.tensors[name]['row_bytes'] / 1e3:.1f} kB)"
                      for (op, name), rows in self._rows_per_op().items()] + [""]
        return "\n".join(lines)

    def _rows_per_op(self) -> dict[tuple[str, str], set]:
        """Ops that read only some rows of a weight (e.g. the embedding lookup): (op, tensor) -> rows."""
        out: dict = {}
        for e in self.events:
            if e.get("rows") is not None and e.get("tensor") in self.tensors:
                out.setdefault((e["op"], e["tensor"]), set()).update(e["rows"])
        return out

    def _touch_layers_text(self) -> list[str]:
        tl = self.touch_layers()
        t, fa = tl["total"], tl["fault_around"]
        mb = lambda b: f"{b / 1e6:.1f} MB"
        faults = sum(max(e["minflt"], 0) + max(e["majflt"], 0) for e in self.events)
        lines = ["## Touch layers: logical vs mapped vs cached", "",
                 f"- logical: the ops read {mb(t['logical_bytes'])} of {mb(t['nbytes'])} of tensor data "
                 f"({mb(t['logical_page_bytes'])} in whole pages)",
                 f"- mapped: {mb(t['mapped_bytes'])} of the file's tensor pages are present in this process at the "
                 f"end ({mb(t['newly_mapped_bytes'])} mapped during the run)",
                 f"- cached: {mb(t['cached_bytes'])} are in the page cache",
                 f"- faults during the ops: {faults} (minor + major, anonymous memory included)"]
        if fa:
            lines.append(f"- fault-around measured on this file: {fa['pages_per_fault']:.1f} pages mapped per fault "
                         f"({fa['touches']} probe touches). Counting faults x 4 KiB would report "
                         f"{mb(faults * 4096)}; faults x {fa['pages_per_fault']:.0f} pages would report "
                         f"{mb(faults * 4096 * fa['pages_per_fault'])}.")
        rows = sorted(tl["tensors"], key=lambda r: -r["nbytes"])[:8]
        lines += ["", format_table_mb(rows), ""]
        return lines

    def save(self, out: str | os.PathLike, plots: bool = True) -> Path:
        """Write profile.json, trace.json, summary.md and (plots=True) the PNG views into the
        directory `out`, as one set: a reader, a crash or a kill sees the old set or the new
        one (atomic.atomic_dir). Other files a user keeps there stay."""
        from .views.static import VIEW_FILES, save_profile_plots

        out = Path(out)
        with atomic.atomic_dir(out, owned=lambda name: name in PROFILE_FILES or name in VIEW_FILES) as tmp:
            (tmp / "profile.json").write_text(json.dumps(self.to_json()))
            (tmp / "trace.json").write_text(json.dumps(chrome_trace(self.events)))
            (tmp / "summary.md").write_text(self.summary_text() + "\n")
            if plots:
                save_profile_plots(self, tmp)
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
    res = d.get("residency", {})
    if "samples" in res:
        n = res["n_pages"]
        res["samples"] = [{**s, "mapped": _unpack(s["mapped"], n), "cached": _unpack(s["cached"], n)}
                          for s in res["samples"]]
    return Profile(d["meta"], d["events"], d.get("generation", {}), d.get("tensors", {}), res, f.parent)


def format_table_mb(rows: list[dict]) -> str:
    conv = [{k: (f"{v / 1e6:.2f}" if k.endswith("bytes") else v) for k, v in r.items()} for r in rows]
    conv = [{(k[:-6] + "_MB" if k.endswith("_bytes") else "MB" if k == "nbytes" else k): v for k, v in r.items()}
            for r in conv]
    return analysis.format_table(conv)


def run_profile(model, prompt: str, n: int = 16, backend: str = "numpy", weight_cache: str = "none",
                device: str | None = None, out: str | os.PathLike | None = None, chat: bool = False,
                faults: bool = True, touch: bool = True, residency: bool = True, cold: bool = False,
                madvise: str | None = None, fallback: bool = False) -> Profile:
    """Load `model`, generate `n` tokens after `prompt` with the recorder on, and save.

    residency: sample the mapped/cached page masks per forward pass; cold: evict the
    file from the page cache before loading; madvise: e.g. "random" (no readahead and no
    fault-around: with cold, the OS-level map becomes exact)."""
    from .generate import generate
    from .instrument import residency as res_mod
    from .instrument.recorder import record
    from .model import load
    from .models import resolve

    still_cached = None
    if cold:
        if hasattr(model, "ops"):
            raise ValueError("cold=True needs a model name or path (it evicts the file before loading)")
        model = resolve(model)
        still_cached = res_mod.evict(model)  # > 0: another process maps the file, not fully cold
    advice = res_mod.ADVICE[madvise] if madvise else None
    m = model if hasattr(model, "ops") else load(model, backend=backend, weight_cache=weight_cache, device=device,
                                                  advice=advice, fallback=fallback)
    try:
        if madvise and m is model:
            res_mod.advise(m.gguf.mapping, madvise)
        with record(m, faults=faults, touch=touch, residency=residency) as rec:
            r = generate(m, prompt, n=n, chat=chat)
        events = [e.to_dict() for e in rec.events]
        meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), "model": model_info(m),
                "settings": {"backend": backend, "weight_cache": weight_cache, "device": device, "n": n,
                             "chat": chat, "faults": faults, "touch": touch, "prompt": prompt, "cold": cold,
                             "cached_after_evict": still_cached, "madvise": madvise},
                "load_seconds": m.load_seconds, "recorder_overhead_ms": rec.overhead_ns / 1e6,
                "weight_cache": getattr(m.ops.backend, "cache_info", dict)(),
                # backends that fuse ops ran them one at a time while recording unless fuse=True
                "fused_while_recording": {b.name: b.fuse is True for b in m.ops.backends
                                          if getattr(b, "can_fuse", False) and b.fuse is not False},
                "backend_errors": list(m.ops.errors)}
        res = {}
        if residency:
            res = {"page_size": res_mod.PAGE, "n_pages": rec.residency.n_pages, "samples": rec.samples,
                   "fault_around": res_mod.fault_around_probe(m.path)}
        prof = Profile(meta, events, r.to_dict(), tensor_table(m), res)
    finally:
        if m is not model:
            m.close()
    if out is not None:
        prof.save(out)
    return prof
