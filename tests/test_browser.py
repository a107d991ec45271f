"""The notebooks in a real browser: JupyterLab in headless Debian Chromium, driven by
Playwright (system /usr/bin/chromium; never `playwright install`). Opens the quickstart,
runs all cells, moves a widget slider and a dropdown and checks the plot changed, and
streams a generation. Screenshots go to $NBTEST_SHOTS (default: a temp dir).

Skipped, with the reason, when Playwright or Chromium is missing; set
NBTEST_REQUIRE_BROWSER=1 to make that a failure (CI)."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

PROJECT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_quickstart.ipynb"
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 must not go through a proxy

pytestmark = pytest.mark.slow


def _skip_or_fail(msg):
    if os.environ.get("NBTEST_REQUIRE_BROWSER"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = Path(os.environ["NBTEST_SHOTS"]) if os.environ.get("NBTEST_SHOTS") else tmp_path_factory.mktemp("shots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def browser(jupyter_home, tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("playwright is not installed (pip install playwright; no `playwright install` needed)")
    if not Path(CHROMIUM).exists():
        _skip_or_fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set $CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS,
                              env={**os.environ, "HOME": str(tmp_path_factory.mktemp("chromium-home"))})
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(browser, jupyter_home, tmp_path_factory):
    pytest.importorskip("jupyterlab")
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    shutil.copy(PROJECT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    settings = base / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no news toast
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(base / "lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", "--ServerApp.allow_root=True", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
           "--ServerApp.jpserver_extensions=jupyter_lsp=False"]
    log_path = base / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with _NO_PROXY.open(f"{url}/api/status?token={token}", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer in 120 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.25)
            yield SimpleNamespace(url=url, token=token, log=log_path)
        finally:
            proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # only our own process group
                proc.wait()


@pytest.fixture
def page(browser, request, shots):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1400}, device_scale_factor=1)
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.page_errors = errors
    failed_before = request.session.testsfailed
    yield pg
    if request.session.testsfailed > failed_before:  # keep what the browser showed when the test failed
        pg.screenshot(path=shots / f"FAILED-{request.node.name}.png", full_page=True)
    ctx.close()


def diff_fraction(png_a: bytes, png_b: bytes) -> float:
    from PIL import Image, ImageChops

    a = Image.open(io.BytesIO(png_a)).convert("RGB")
    b = Image.open(io.BytesIO(png_b)).convert("RGB")
    w, h = min(a.width, b.width), min(a.height, b.height)
    diff = ImageChops.difference(a.crop((0, 0, w, h)), b.crop((0, 0, w, h))).convert("L")
    return sum(diff.histogram()[17:]) / (w * h)


def test_quickstart_in_jupyterlab(page, lab, shots):
    from playwright.sync_api import expect

    page.goto(f"{lab.url}/lab/workspaces/t-{uuid.uuid4().hex[:8]}/tree/{NOTEBOOK}?token={lab.token}")
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
    panel = page.locator(".jp-NotebookPanel:visible")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()

    # the op-cost explorer: a plot image, a top-N slider, a status line saying what the plot shows
    box = panel.locator(".jp-OutputArea-output > .widget-vbox", has_text="Op cost explorer")
    state = box.locator(".wb-state")
    expect(state).to_have_attribute("data-state", "by=op;phase=both;top=8", timeout=240_000)
    img = box.locator("img.widget-image")
    expect(img).to_be_visible()
    assert not panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                             has_text="Traceback").count()
    page.screenshot(path=shots / "lab_quickstart_page.png")

    def shot(name):
        img.scroll_into_view_if_needed()
        return img.screenshot(path=shots / name)

    src0, shot0 = img.get_attribute("src"), shot("lab_opcost_1_by_op.png")
    box.locator("select").first.select_option("tensor")  # group by weight tensor: a different plot
    expect(state).to_have_attribute("data-state", "by=tensor;phase=both;top=8")
    src1, shot1 = img.get_attribute("src"), shot("lab_opcost_2_by_tensor_top8.png")
    assert src1 != src0 and diff_fraction(shot0, shot1) > 0.01

    slider = box.locator(".widget-slider", has_text="top N")
    handle = slider.locator(".noUi-handle")
    handle.focus()
    for _ in range(4):
        handle.press("ArrowRight")
    expect(slider.locator(".widget-readout")).to_have_text("12")
    # the status line follows the image: once it says top=12, the top-12 plot is shown
    expect(state).to_have_attribute("data-state", "by=tensor;phase=both;top=12")
    src2, shot2 = img.get_attribute("src"), shot("lab_opcost_3_by_tensor_top12.png")
    assert src2 not in (src0, src1) and diff_fraction(shot1, shot2) > 0.01
    assert box.locator("table.wb-table tr").count() == 1 + 12  # the table follows the controls too

    box.get_by_role("button", name="decode", exact=True).click()  # phase toggle
    expect(state).to_have_attribute("data-state", "by=tensor;phase=decode;top=12")
    assert img.get_attribute("src") not in (src0, src1, src2)
    box.scroll_into_view_if_needed()
    box.screenshot(path=shots / "lab_opcost_4_decode.png")

    # the generation widget streams tokens and ends with a per-op table
    gen = panel.locator(".jp-OutputArea-output > .widget-vbox", has_text="Generation with a live per-op profile")
    gen.get_by_role("button", name="Generate").click()
    expect(gen.locator(".wb-state")).to_have_attribute("data-state", "done:12", timeout=180_000)
    expect(gen.locator("pre")).to_contain_text("Paris")
    assert gen.locator("table.wb-table").get_by_text("matmul").count() >= 1
    gen.screenshot(path=shots / "lab_generation_done.png")
    assert not page.page_errors, page.page_errors
