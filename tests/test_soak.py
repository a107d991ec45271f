"""The soak tool: its memory figures are the kernel's, and a short soak reports every round."""

from __future__ import annotations

import json
import subprocess
import sys

from workbench.soak import run_soak, summarize


def test_memory_sees_an_allocation():
    # in a fresh process: in this one, freed memory that is still resident could be reused
    code = ("import numpy as np; from workbench.soak import memory; b = memory()['anon_mb']; "
            "a = np.ones(64 << 20, np.uint8); print(b, memory()['anon_mb'])")
    before, after = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout.split())
    assert 60 <= after - before <= 80, (before, after)


def test_summary_growth_from_samples():
    samples = [{"round": i + 1, "t_s": float(i), "anon_mb": 100.0 + (i >= 12), "file_mb": 50.0, "peak_mb": 200.0,
                "py_objects": 1000 + i, "m/opencl:opencl.weight_buffers": 7} for i in range(20)]
    s = summarize(samples)
    assert s["rounds"] == 20 and s["anon_growth_mb"] == 1.0 and s["anon_growth_after_tenth_mb"] == 1.0
    assert s["anon_mb"] == {"first": 100.0, "tenth": 100.0, "last": 101.0, "max": 101.0}
    assert s["resources"] == {"m/opencl:opencl.weight_buffers": {"first": 7, "last": 7, "max": 7}}


def test_short_soak_on_the_tiny_model(tiny_model_path):
    lines = []
    r = run_soak([str(tiny_model_path)], ["numpy"], minutes=0.1, n_gen=4, n_prof=2, every=2, log=lines.append)
    s = r["summary"]
    assert s["rounds"] == len(r["samples"]) >= 2 and s["seconds"] >= 6.0
    assert [x["round"] for x in r["samples"]] == list(range(1, s["rounds"] + 1))
    assert all(x["anon_mb"] > 10 and x["file_mb"] > 1 for x in r["samples"])
    assert lines and lines[0].startswith("round 1 at")


def test_cli_writes_the_report(tiny_model_path, tmp_path):
    out = tmp_path / "soak.json"
    p = subprocess.run([sys.executable, "-m", "workbench", "soak", str(tiny_model_path), "--minutes", "0.02", "-n", "3",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "anonymous RSS MB: after round 1" in p.stdout
    assert json.loads(out.read_text())["summary"]["rounds"] >= 1
