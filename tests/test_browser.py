"""End to end: the real Streamlit server driven by headless Chromium (Playwright).

On a tiny trained run every page is opened by its URL path; none may show a Streamlit exception element, and on
the Grad-CAM page a real full-size X-ray is uploaded through the file input and the heatmaps must appear. On the
committed 12-entry run every page is opened at 1440×900 with its defaults and must fit: no page taller than about
two screens, no table with an inner scroll bar or cut-off columns, every plot titled. Screenshots of every page go
to ``$CXR_SCREENSHOTS`` (default ``test-output/screens/``, git-ignored; CI keeps them as artifacts). The browser is
the system's chromium (``$CXR_CHROMIUM``, default /usr/bin/chromium); Playwright never downloads one.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.store import default_run, list_runs
from tests.conftest import FULLRES, REPO, need

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
SHOTS = Path(os.environ.get("CXR_SCREENSHOTS") or REPO / "test-output" / "screens")
COMMITTED = REPO / "artifacts"
SCREEN = {"width": 1440, "height": 900}
MAX_SCREENS = 2.2  # "about two screens" of 900 px with the defaults
# Pages whose layout another change is still reworking (issue 11's Grad-CAM/Errors items): measured and
# reported, not yet held to the height limit. Remove a name once its page fits.
HEIGHT_PENDING = {"Errors"}
# Every dataframe the user can see: its scroller's size against its box (glide-data-grid draws on a canvas, so a
# cut-off column or row shows up as a scroller larger than its client area).
TABLES_JS = """() => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stDataFrame"]')]
  .filter(df => df.offsetParent !== null)
  .map(df => {
    const sc = df.querySelector('.dvn-scroller') || df;
    const key = ((df.closest('[class*="st-key-"]') || {}).className || '').match(/st-key-[\\w-]+/);
    return {key: key ? key[0] : '(no key)', sh: sc.scrollHeight, ch: sc.clientHeight, sw: sc.scrollWidth,
            cw: sc.clientWidth};
  })"""
# Every plotly chart: its title and axis titles (a plot nobody can read is a bug).
PLOTS_JS = """() => [...document.querySelectorAll('[data-testid="stMain"] .js-plotly-plot')]
  .filter(p => p.offsetParent !== null)
  .map(p => ({title: (p.querySelector('.gtitle') || {}).textContent || '',
              axes: [...p.querySelectorAll('.g-xtitle, .g-ytitle, .g-x2title, .g-y2title')].map(t => t.textContent)
                    .filter(t => t.trim()).length}))"""
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
STARTUP_TIMEOUT_S = 60
PAGE_TIMEOUT_MS = 90_000
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def _pages() -> list[tuple[str, str]]:
    """(title, URL path) of Home and of every other page in dashboard/views (the entrypoint's st.navigation names
    each by its file, as Streamlit named the pages/ files before: /Grad-CAM, /Training_curves ...)."""
    from streamlit.source_util import page_icon_and_name

    found = [("Home", "")]
    for f in sorted(f for f in (REPO / "dashboard" / "views").glob("*.py") if f.name != "home.py"):
        name = page_icon_and_name(f)[1]
        found.append((name, name))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _serve(artifacts: Path, tmp_path_factory):
    """``streamlit run dashboard/Home.py`` on a free port with ``artifacts``; stopped however the tests end."""
    port = _free_port()
    logs = tmp_path_factory.mktemp("streamlit")
    env = {**os.environ, "CXR_OFFLINE": "1", "CXR_CACHE_DIR": str(logs / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("CXR_ARTIFACTS", None)  # the --artifacts argument must be what the app uses
    log = open(logs / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none", "--", "--artifacts", str(artifacts)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{(logs / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer within {STARTUP_TIMEOUT_S} s:\n"
                            f"{(logs / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    yield from _serve(tiny_run, tmp_path_factory)


@pytest.fixture(scope="module")
def committed_server(tmp_path_factory):
    assert (COMMITTED / "kermany-lineup" / "run.json").exists(), "the committed run is missing"
    yield from _serve(COMMITTED, tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium or set CXR_CHROMIUM)")
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


def _wait_idle(page) -> None:
    """The script has run to its end and the page has its title (no spinner, no skeleton left)."""
    page.wait_for_selector(IDLE, timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=PAGE_TIMEOUT_MS)
    page.wait_for_function("!document.querySelector('[data-testid=\"stSpinner\"]')", timeout=PAGE_TIMEOUT_MS)
    # widgets and tables whose code the browser is still loading show a skeleton (slow on a loaded machine)
    page.wait_for_function("!document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=PAGE_TIMEOUT_MS)
    page.wait_for_timeout(300)  # charts (plotly/vega) lay out after the script finishes


def _assert_no_exception(page, where: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    if exc.count():
        pytest.fail(f"{where}: Streamlit exception shown: {exc.first.inner_text()[:2000]}")


def _screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to the content first."""
    size = page.viewport_size
    height = page.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], "
                           "[data-testid=\"stSidebarContent\"]')].map(e => e.scrollHeight), 0)")
    page.set_viewport_size({"width": size["width"], "height": int(min(max(height + 40, size["height"]), 8000))})
    page.wait_for_timeout(400)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "home"


def test_every_page_renders_and_gradcam_upload_shows_heatmaps(browser, server, shots, tmp_path):
    # `browser` first: without Chromium the test skips before the tiny run is trained and the server started.
    pages = _pages()
    titles = {t for t, _ in pages}
    # The dashboard's seven pages are all there.
    assert {"Home", "Training_curves", "ROC_PR_confusion", "Model_comparison", "Grad-CAM", "Errors",
            "Calibration"} <= titles, titles
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    errors_seen: dict[str, list[str]] = {}
    try:
        for i, (title, path) in enumerate(pages):
            page.goto(f"{server}/{path}", wait_until="domcontentloaded")
            _wait_idle(page)
            _assert_no_exception(page, title)
            errors_seen[title] = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
            _screenshot(page, shots / f"tiny_{i:02d}_{_slug(title)}.png")
            if title == "Errors":
                # The tiny run has mistakes on its test split, and the data files are here: CAM thumbnails.
                assert page.locator('[data-testid="stImage"] img').count() >= 1

        # Grad-CAM: upload a real full-size film, wait for the film plus one heatmap per model.
        film = sorted((need(FULLRES) / "val" / "PNEUMONIA").glob("*.jpeg"))[0]
        page.goto(f"{server}/Grad-CAM", wait_until="domcontentloaded")
        _wait_idle(page)
        t0 = time.monotonic()
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"a text file, not a picture\n")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(film), str(bad)])
        page.wait_for_function(  # the uploaded film's heading (not the uploader's list, not the example film the
            # page opened on) with its two maps
            f"[...document.querySelectorAll('[data-testid=\"stMain\"] h3')].some(h => h.textContent.includes("
            f"'{film.name}')) && document.querySelectorAll('[data-testid=\"stMain\"] [data-testid=\"stImage\"] "
            "img').length >= 3", timeout=PAGE_TIMEOUT_MS)
        _wait_idle(page)
        seconds = time.monotonic() - t0
        _assert_no_exception(page, "Grad-CAM after upload")
        main = page.locator('[data-testid="stMain"]')
        assert main.locator('[data-testid="stMetricValue"]').count() == 2
        for value in main.locator('[data-testid="stMetricValue"]').all_inner_texts():
            assert re.fullmatch(r"[01]\.\d{3}", value.strip()), value
        assert main.get_by_text("Research use only").count() >= 1
        alerts = main.locator('[data-testid="stAlertContentError"]').all_inner_texts()
        assert len(alerts) == 1 and "notes.png" in alerts[0], alerts  # the bad file, in its own spot only
        assert main.get_by_text(film.name).count() >= 1
        _screenshot(page, shots / "tiny_10_grad_cam_upload.png")
        print(f"Grad-CAM upload to heatmaps: {seconds:.1f} s; error alerts per page: {errors_seen}")
    finally:
        context.close()


def _expand_all(page) -> None:
    """Open every collapsed expander, so the tables inside are checked too."""
    for summary in page.locator('[data-testid="stMain"] [data-testid="stExpander"] details:not([open]) summary').all():
        summary.click()
    page.wait_for_timeout(500)


def test_committed_run_pages_fit_a_1440_screen(browser, committed_server, shots):
    """Every page with its defaults on the committed default run (artifacts/DEFAULT_RUN), as a user first sees it
    at 1440×900."""
    shown = default_run(list_runs(COMMITTED), COMMITTED)
    context = browser.new_context(viewport=SCREEN)
    page = context.new_page()
    problems, heights = [], {}
    try:
        for i, (title, path) in enumerate(_pages()):
            page.goto(f"{committed_server}/{path}", wait_until="domcontentloaded")
            _wait_idle(page)
            _assert_no_exception(page, title)
            heights[title] = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            _screenshot(page, shots / f"{i:02d}_{_slug(title)}.png")
            if heights[title] > MAX_SCREENS * SCREEN["height"] and title not in HEIGHT_PENDING:
                problems.append(f"{title}: {heights[title]} px tall (> {MAX_SCREENS} screens)")
            for plot in page.evaluate(PLOTS_JS):
                if not plot["title"].strip() and plot["axes"] < 2:
                    problems.append(f"{title}: a plot without a title or axis titles")
            _expand_all(page)
            tables = page.evaluate(TABLES_JS)
            for t in tables:
                if t["sh"] > t["ch"] + 1 or t["sw"] > t["cw"] + 1:
                    problems.append(f"{title}: table {t['key']} scrolls inside ({t['sw']}×{t['sh']} in "
                                    f"{t['cw']}×{t['ch']})")
            if title in ("Grad-CAM", "Consensus"):  # they open on a committed example film, said to be one
                main = page.locator('[data-testid="stMain"]')
                assert main.get_by_text("Example film", exact=False).count() >= 1, title
                assert main.locator('[data-testid="stImage"] img').count() >= 2, title  # the film and a map
            if title == "Home":
                rows = len(shown.models)  # the leaderboard is full height: every model of the run, no inner scroll
                assert any(t["key"] == "st-key-home_leaderboard" and t["ch"] > rows * 30 for t in tables), tables
        print(f"page heights at 1440×900 (px): {heights}")
        assert not problems, problems
    finally:
        context.close()
