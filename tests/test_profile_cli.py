"""`workbench profile`: files, trace validity, and py-spy beside it."""

import json
import subprocess
import sys


def test_profile_writes_valid_trace_and_summary(tmp_path, smollm2_path):
    out = tmp_path / "p"
    r = subprocess.run([sys.executable, "-m", "workbench", "profile", str(smollm2_path), "--prompt", "Hello there",
                        "-n", "3", "--out", str(out), "--py-spy"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Ops by kind" in r.stdout and "Touch layers" in r.stdout
    trace = json.loads((out / "trace.json").read_text())["traceEvents"]
    xs = [e for e in trace if e["ph"] == "X"]
    assert all({"name", "ts", "dur", "pid", "tid"} <= set(e) for e in xs)
    ts = [e["ts"] for e in trace if e["ph"] != "M"]
    assert ts == sorted(ts)  # monotonic
    spans = [e for e in xs if e["cat"] in ("prefill", "decode")]
    assert len(spans) == 3  # one prefill pass, then two decoded tokens (the third token needs no pass)
    for s in spans:  # 30 layers of ops nested inside each pass
        inside = [e for e in xs if e is not s and e["cat"] not in ("prefill", "decode")
                  and s["ts"] <= e["ts"] <= s["ts"] + s["dur"]]
        layers = {e["name"].split(" L")[1] for e in inside if " L" in e["name"]}
        assert len(layers) == 30
    assert any(e["ph"] == "C" for e in trace)
    prof = json.loads((out / "profile.json").read_text())
    assert prof["schema"] == "workbench.profile" and prof["meta"]["model"]["sha256"].startswith("b179c952")
    speedscope = json.loads((out / "py-spy.speedscope.json").read_text())
    assert speedscope["profiles"] and "shared" in speedscope
    assert "<svg" in (out / "py-spy.flamegraph.svg").read_text()[:2000]
