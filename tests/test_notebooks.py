"""Every notebook runs headless (nbclient, a real kernel, the real SmolLM2), without an error
output, within its time budget, and shows what its text promises: figures, widget fallbacks
and numbers in range. Executed copies are kept in $NBTEST_ARTIFACTS (default: a temp dir)."""

import base64
import os
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MAX_SECONDS = float(os.environ.get("NBTEST_MAX_SECONDS", 180))  # each notebook: < 3 minutes on this machine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = os.environ.get("NBTEST_ARTIFACTS")
    out = Path(d) / "notebooks" if d else tmp_path_factory.mktemp("executed")
    out.mkdir(parents=True, exist_ok=True)
    return out


def execute(name, tmp_path, artifacts):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    t0 = time.perf_counter()
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, artifacts / name)
    seconds = time.perf_counter() - t0
    return nb, seconds


class Outputs:
    """The executed notebook's outputs, flattened."""

    def __init__(self, nb):
        self.cells = [c for c in nb.cells if c.cell_type == "code"]
        self.outputs = [o for c in self.cells for o in c.outputs]
        self.errors = [o for o in self.outputs if o.output_type == "error"]
        self.stdout = "".join(o.text for o in self.outputs if o.output_type == "stream" and o.name == "stdout")
        self.stderr = "".join(o.text for o in self.outputs if o.output_type == "stream" and o.name == "stderr")
        self.pngs = [base64.b64decode(o.data["image/png"]) for o in self.outputs if "image/png" in o.get("data", {})]
        self.widget_fallbacks = [o for o in self.outputs if WIDGET_VIEW in o.get("data", {}) and "image/png" in o.data]
        self.texts = "".join(o.data.get("text/plain", "") + o.data.get("text/markdown", "")
                             for o in self.outputs if "data" in o)

    def number(self, pattern: str) -> float:
        m = re.search(pattern, self.stdout)
        assert m, f"no match for {pattern!r} in the notebook's output:\n{self.stdout[-3000:]}"
        return float(m.group(1).replace(",", ""))


def run(name, tmp_path, artifacts) -> Outputs:
    nb, seconds = execute(name, tmp_path, artifacts)
    out = Outputs(nb)
    assert not out.errors, [f"{e.ename}: {e.evalue}" for e in out.errors]
    assert "Traceback" not in out.stderr
    assert seconds < MAX_SECONDS, f"{name} took {seconds:.0f} s (budget {MAX_SECONDS:.0f} s)"
    for png in out.pngs:
        assert png.startswith(b"\x89PNG") and len(png) > 5000  # a drawn figure, not an empty canvas
    # every code cell was executed, in order
    assert [c.execution_count for c in out.cells] == list(range(1, len(out.cells) + 1))
    return out


def test_01_quickstart(tmp_path, artifacts, jupyter_home):
    out = run("01_quickstart.ipynb", tmp_path, artifacts)
    assert "llama: 30 layers, width 576, 9 heads, vocabulary 49152" in out.stdout
    assert "Paris" in out.stdout  # greedy continuation of "The capital of France is"
    assert out.number(r"(\d+) op events") > 1000
    assert "| matmul |" in out.texts  # the decode table
    assert len(out.pngs) >= 3  # op cost, timeline, the explorer's static fallback
    assert len(out.widget_fallbacks) == 1
    assert out.number(r"decode: ([\d.]+) tok/s") > 0.3


def test_02_load_time(tmp_path, artifacts, jupyter_home):
    out = run("02_load_time.ipynb", tmp_path, artifacts)
    assert out.number(r"(\d+) trials;") == 14
    for s in ("read", "mmap ", "mmap+populate", "mmap+willneed", "mmap+touch"):
        assert s in out.stdout
    assert 50 < out.number(r"fastest first token from a cold cache: \S+ with \d thread\(s\), (\d+) ms") < 30000
    # the f32 store: written by the first load, mapped by the second, which then skips the dequantization
    first = out.number(r"\| first load \| [\d.]+ \| ([\d.]+) \| 538 \| written \|")
    second = out.number(r"\| second load \| [\d.]+ \| ([\d.]+) \| 538 \| mapped \|")
    assert second < first / 5
    assert len(out.pngs) >= 4  # summary, grid, one timeline, the load explorer's fallback
    assert len(out.widget_fallbacks) == 1


def test_03_which_weights_are_touched(tmp_path, artifacts, jupyter_home):
    out = run("03_which_weights_are_touched.ipynb", tmp_path, artifacts)
    # warm cache: faults x 4 KiB says a small fraction; the logical truth says everything
    logical = out.number(r"logical truth\s+=\s+([\d.]+) MB of")
    weights = out.number(r"logical truth\s+=\s+[\d.]+ MB of ([\d.]+) MB of weights")
    assert logical == weights == pytest.approx(96.6, abs=0.1)
    assert out.number(r"faults x 4 KiB\s+=\s+([\d.]+) MB") < 0.5 * logical
    assert out.number(r"\(([\d.]+) pages per fault\)") > 1.5  # fault-around is on
    # cold + MADV_RANDOM: faults x 4 KiB matches the pages read (anonymous faults add a little)
    exact = out.number(r"faults: [\d,]+; faults x 4 KiB = ([\d.]+) MB")
    pages = out.number(r"MB of rows, ([\d.]+) MB in whole pages")
    assert exact == pytest.approx(pages, rel=0.05)
    assert out.number(r"only logical: (\d+) B") == 0 and out.number(r"only mapped: (\d+) B") == 0
    assert len(out.pngs) >= 7
    assert len(out.widget_fallbacks) == 1


def test_04_per_op_profiling(tmp_path, artifacts, jupyter_home):
    out = run("04_per_op_profiling.ipynb", tmp_path, artifacts)
    assert "'op': 'matmul'" in out.texts and "'phase': 'decode'" in out.texts  # one event, shown
    assert "'profile.json'" in out.stdout and "'trace.json'" in out.stdout and "'summary.md'" in out.stdout
    assert out.number(r"'X': (\d+)") > 1000 and out.number(r"'C': (\d+)") > 0
    assert "same as recorded: True" in out.stdout
    assert "**by tensor, decode**" in out.texts
    assert len(out.pngs) >= 7  # 2 op cost, layer cost, 2 timelines, backends, explorer
    assert len(out.widget_fallbacks) == 1


def test_06_sparsity(tmp_path, artifacts, jupyter_home):
    out = run("06_sparsity.ipynb", tmp_path, artifacts)
    assert 0.5 < out.number(r"share of all weights with \|w\| < 0.01: ([\d.]+) %") < 30
    assert out.number(r"captured (\d+) layers") == 30
    assert out.number(r"x (\d+) activations") == 1536
    assert 0 < out.number(r"largest: mean ([\d.]+) %") < 100
    assert len(out.pngs) >= 8
    assert len(out.widget_fallbacks) == 2


def test_05_opencl_gpu(tmp_path, artifacts, jupyter_home):
    pytest.importorskip("pyopencl", reason="the opencl backend needs pyopencl and a device")
    out = run("05_opencl_gpu.ipynb", tmp_path, artifacts)
    assert "device 0: " in out.stdout and "picked by default: " in out.stdout
    assert "BackendError: no OpenCL device matches 'NVIDIA'" in out.stdout  # a name that matches nothing
    assert "workbench: error: no OpenCL device matches 'NVIDIA'" in out.stdout + out.stderr  # the same from the CLI
    assert "| weights_in_place |" in out.texts  # describe()
    # numpy vs opencl on the same prompt
    assert out.number(r"KL\(numpy \|\| opencl\) per position: max ([\d.e+-]+) nats") < 1e-4
    assert out.number(r"top-10 overlap at the last position: (\d+) of 10") >= 9
    assert "same greedy tokens: True" in out.stdout
    # mixed backends: matmuls on opencl, the rest on numpy, nothing fell back
    assert "| matmul | opencl | False |" in out.texts and "| rms_norm | numpy | False |" in out.texts
    # kernel timings from profiling events
    assert "'device_ns'" in out.texts and "matvec_q4_1" in out.texts
    host = out.number(r"decode, all ops: host (\d+) ms")
    device = out.number(r"decode, all ops: host \d+ ms, device (\d+) ms")
    assert 0 < device <= host
    # resident, fused mode (the default) against per-op round trips, measured; the same text
    assert out.number(r"opencl, per-op round trips\s+decode: median ([\d.]+) tok/s") > 0.3
    assert out.number(r"opencl \(default\)\s+decode: median ([\d.]+) tok/s") > 0.3
    assert "same text: True" in out.stdout
    assert len(out.pngs) >= 4  # backend cost, host vs device, backend comparison, explorer
    assert len(out.widget_fallbacks) == 1


def test_07_sparse_loading(tmp_path, artifacts, jupyter_home):
    out = run("07_sparse_loading.ipynb", tmp_path, artifacts)
    assert out.number(r"(\d+) layers x \d+ tokens") == 30
    assert out.number(r"x (\d+) FFN neurons") == 1536
    assert 2 < out.number(r"\|a\| < 0.01: mean ([\d.]+) % of the neurons") < 60
    assert 0 <= out.number(r"hot \(active for >= half the tokens\): median (\d+) of 1536") <= 1536
    st_t = out.number(r"threshold sets ([\d.]+),")
    st_k = out.number(r"top-10 % sets ([\d.]+)")
    assert 0 < st_k < st_t < 1  # the strongest neurons change more than the thresholded sets
    # the sweep: small thresholds are cheap, a lagging window is not
    kl_small = out.number(r"threshold\(t=0.005\)\s+neurons\s+[\d.]+ %, mean KL ([\d.e+-]+)")
    kl_window = out.number(r"window\(k=4, t=0.01\)\s+neurons\s+[\d.]+ %, mean KL ([\d.e+-]+)")
    assert kl_small < 0.01 and kl_window > kl_small
    assert out.number(r"threshold\(t=0.005\)\s+neurons.*greedy (\d+)/8") >= 7
    used = out.number(r"threshold 0.05: (\d+) % of neurons used")
    assert out.number(r"gate/up bytes (\d+) %") == pytest.approx(used, abs=2)  # rows follow the neurons
    down = out.number(r"ffn_down bytes (\d+) %")
    pages = out.number(r"GGUF pages (\d+) %")
    assert down > 80 and pages > 80 and out.number(r"bundle pages (\d+) %") <= pages  # strided columns, pages
    # 7B: the analytic layout; the slice written and measured here
    assert "file 3,792,078,336 B" in out.stdout
    assert out.number(r"= ([\d.]+) % of the tensor data") == pytest.approx(98.06, abs=0.01)
    assert out.stdout.count("equals the analytic touch: True") == 2
    # cold + MADV_RANDOM: one major fault per page of the token's touch map
    pages_touched = out.number(r"madvise=random: ([\d,]+) pages")
    assert out.number(r"madvise=random: .*?\+ ([\d,]+) major") == pytest.approx(pages_touched, rel=0.01)
    assert "one page holds the blocks of 7,264 neurons" in out.stdout
    assert len(out.pngs) >= 6  # sparsity map, per layer, frequency, stability, sweep, explorer
    assert len(out.widget_fallbacks) == 1
