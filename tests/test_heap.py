"""workbench.heap: freed memory stays in the heap, so repeated large temporaries stop faulting.

Each case runs in a fresh process (the setting is process-wide) and counts minor page faults
with getrusage (the kernel's count, not ours) over ten rounds of what a forward does: several
large temporaries alive at once (five 4 MiB arrays, every page written), then all freed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from workbench import heap
state = heap.keep_freed_memory()

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def round():
    live = [np.empty(1 << 20, np.float32) for _ in range(5)]  # 4 MiB each
    for a in live:
        a.fill(1.0)

for _ in range(3):  # the heap grows once (and glibc's own thresholds adapt)
    round()
f0 = faults()
for _ in range(10):
    round()
print(json.dumps({"state": state, "faults": faults() - f0}))
"""

PAGES = 10 * 5 * (4 << 20) // 4096  # pages written


def _run(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_MALLOC"}
    if env_value is not None:
        env["WORKBENCH_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_memory_is_reused_without_faults():
    kept = _run(None)
    assert kept["state"]["allocator"] == "glibc, freed memory kept"
    assert kept["faults"] < PAGES // 20, kept  # at most a few pages, not one per page written


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_system_setting_leaves_glibc_defaults():
    system = _run("system")
    assert system["state"] == {"allocator": "system"}
    assert system["faults"] > PAGES // 4, system  # glibc hands freed arrays back to the system
