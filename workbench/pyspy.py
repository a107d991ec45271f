"""Python-level hot spots beside the op-level view: run a workbench command under py-spy.

`record_workload(argv, out_dir)` runs `python -m workbench <argv>` twice under
`py-spy record` (once for a speedscope file, once for a flamegraph SVG; py-spy writes one
format per run) and returns the paths. The recorded command's own output goes to a
scratch directory inside `out_dir` so the main profile is not overwritten.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


class PySpyError(RuntimeError):
    pass


def py_spy_path() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise PySpyError("py-spy is not installed: pip install py-spy")
    return exe


def _replace_out(argv: list[str], new_out: str) -> list[str]:
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--out" and i + 1 < len(out):
            out[i + 1] = new_out
        elif a.startswith("--out="):
            out[i] = f"--out={new_out}"
    return out


def record_workload(argv: list[str], out_dir: str | Path, rate: int = 250) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = py_spy_path()
    inner = _replace_out(argv, str(out_dir / "py-spy-run"))
    written = []
    for fmt, name in (("speedscope", "py-spy.speedscope.json"), ("flamegraph", "py-spy.flamegraph.svg")):
        target = out_dir / name
        cmd = [exe, "record", "--rate", str(rate), "--format", fmt, "--output", str(target), "--",
               sys.executable, "-m", "workbench", *inner]
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0 or not target.exists():
            tail = r.stderr.strip().splitlines()[-1:] if r.stderr else []
            raise PySpyError(f"py-spy record failed ({r.returncode}): {tail}")
        written.append(target)
    shutil.rmtree(out_dir / "py-spy-run", ignore_errors=True)
    return written
