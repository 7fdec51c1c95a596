"""Dashboard: what a user waits for in the browser. The real server (``python -m streamlit run dashboard/Home.py
... -- --artifacts DIR``) is driven by headless Chromium through Playwright (the system's /usr/bin/chromium;
nothing is downloaded), at 1440×900.

* Cold start: from launching the server process to the Home page's leaderboard rendered in a fresh browser tab
  with the script finished (``data-test-script-state="notRunning"``, no spinner). One untimed start first.
* First visit, per page, with the committed 12-entry run (artifacts/kermany-lineup) and each page's defaults: a
  new browser session (a new user) opens Home by its URL, then clicks each page's sidebar link in turn; each is
  timed until the page's title is shown, its script has finished and no spinner is left. The server's caches are
  warm (one untimed session first), as they are for every user but the very first.
* Interaction, per page: one widget change (``INTERACTIONS``) until the rerun it starts has finished (a
  MutationObserver on the app's script state, timed in the page's own clock).
* Memory: on the Grad-CAM page of the 8-model fixture run (its two default models), each request uploads a
  different real film (a new image, so both maps are really computed: the page caches maps per image) and waits
  for both maps, then removes it. RSS of the server and its children (psutil) after a warm-up of 10 requests and
  after 100 more.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import REPO
from bench.report import check, figure
from bench.timing import Ctx, loadavg, median, p95

CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
TIMEOUT_MS = 180_000
SCREEN = {"width": 1440, "height": 900}
COMMITTED = REPO / "artifacts"
FIRST_VISIT_TARGET_S = 2.0
INTERACTION_TARGET_S = 0.5
# One widget change per page: (what it is, where: a CSS selector, how: "right"/"left" on a slider, "chip" removes
# the first chosen model, "button" clicks). A page not listed (or whose widget is gone) falls back to its first
# slider.
INTERACTIONS = {
    "": ("remove a model from the sidebar choice",
         "[data-testid='stSidebar'] [data-testid='stMultiSelectTagsContainer'] button[aria-label^='Remove']", "chip"),
    "Training_curves": ("smoothing slider one step", ".st-key-curves_smoothing input[type='range']", "right"),
    "ROC_PR_confusion": ("threshold slider one step",
                         "[data-testid='stMain'] [class*='st-key-thr_'] input[type='range']", "right"),
    "Model_comparison": ("split: official_val", ".st-key-cmp_split input", "select:official_val"),
    "Grad-CAM": ("heatmap opacity slider one step", ".st-key-cam_alpha input[type='range']", "right"),
    "Errors": ("films per kind one fewer", ".st-key-err_n input[type='range']", "left"),
    "Calibration": ("split: official_val", ".st-key-cal_split input", "select:official_val"),
}
FALLBACKS = [("the page's first slider one step", "[data-testid='stMain'] input[type='range'], "
              "[data-testid='stSidebar'] input[type='range']", "right"),
             ("the page's first select box: its next option", "[data-testid='stMain'] [data-testid='stSelectbox'] "
              "input", "select:#1")]
INTERACTION_TIMEOUT_MS = 60_000
# The script's run state: records (in the page's clock) when a rerun starts and when it has finished.
OBSERVE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__rerun = {started: null, done: null};
  if (window.__obs) window.__obs.disconnect();
  window.__obs = new MutationObserver(() => {
    const state = app.getAttribute('data-test-script-state');
    if (state === 'running' && window.__rerun.started === null) window.__rerun.started = performance.now();
    if (state === 'notRunning' && window.__rerun.started !== null && window.__rerun.done === null)
      window.__rerun.done = performance.now();
  });
  window.__obs.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  return performance.now();
}"""
RERUN_DONE = """() => window.__rerun && window.__rerun.done !== null &&
  !document.querySelector('[data-testid="stSpinner"]')"""

# The script has finished, no spinner is left and the main area has a title other than `old`.
RENDERED = """(old) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSpinner"]')) return false;
  const h1 = document.querySelector('[data-testid="stMain"] h1');
  return !!h1 && h1.textContent !== old;
}"""
# Grad-CAM: the script has finished and shows `name` as a film's heading with at least one probability (or none).
CAM_DONE = """([name, want]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSpinner"]')) return false;
  const main = document.querySelector('[data-testid="stMain"]');
  const metrics = main.querySelectorAll('[data-testid="stMetricValue"]').length;
  if (!want) return metrics === 0;
  const heads = [...main.querySelectorAll('h3')].map(h => h.textContent);
  return metrics >= want && heads.some(t => t.includes(name));
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run dashboard/Home.py`` on a free port; ``stop()`` ends it (only this process)."""

    def __init__(self, artifacts: Path, log_dir: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CXR_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("CXR_ARTIFACTS", None)
        self.log = open(log_dir / f"streamlit-{self.port}.log", "wb")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py", "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats",
             "false", "--server.fileWatcherType", "none", "--", "--artifacts", str(artifacts)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode} (log {self.log.name})")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.t0
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer within {timeout} s (log {self.log.name})")
            time.sleep(0.05)

    def rss_mb(self) -> float:
        import psutil

        p = psutil.Process(self.proc.pid)
        procs = [p] + p.children(recursive=True)
        total = 0
        for q in procs:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.log.close()


def _h1(page) -> str:
    return page.evaluate("(document.querySelector('[data-testid=\"stMain\"] h1') || {}).textContent || ''")


def _cold_start(browser, artifacts: Path, logs: Path, keep: bool = False):
    """Seconds to health, seconds to the rendered leaderboard; the server and tab when ``keep``."""
    server = Server(artifacts, logs)
    context = None
    try:
        healthy = server.wait_healthy()
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.goto(server.url, wait_until="commit", timeout=TIMEOUT_MS)
        page.wait_for_selector(".st-key-home_leaderboard", timeout=TIMEOUT_MS)
        page.wait_for_function(RENDERED, arg="", timeout=TIMEOUT_MS)
        rendered = time.perf_counter() - server.t0
        if keep:
            return healthy, rendered, server, context, page
    except BaseException:
        keep = False
        raise
    finally:
        if not keep:
            if context is not None:
                context.close()
            server.stop()
    return healthy, rendered, None, None, None


def _goto_page(page, path: str) -> float:
    """Click the sidebar link of ``path``; seconds until that page is rendered."""
    old = _h1(page)
    link = page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]').first
    t0 = time.perf_counter()
    link.click()
    page.wait_for_function(RENDERED, arg=old, timeout=TIMEOUT_MS)
    return time.perf_counter() - t0


def _pages() -> list[str]:
    """URL paths of Home ("") and of every page in dashboard/pages, as Streamlit names them."""
    from streamlit.source_util import page_icon_and_name

    return [""] + [page_icon_and_name(f)[1] for f in sorted((REPO / "dashboard" / "pages").glob("*.py"))]


def _first_visits(browser, url: str, pages: list[str], reps: int) -> dict[str, list[float]]:
    """Seconds to each page's first render in a new session: Home by URL, the others by a sidebar click. One
    untimed session first (the server's caches and imports), then ``reps`` timed sessions."""
    out: dict[str, list[float]] = {p: [] for p in pages}
    for r in range(reps + 1):
        context = browser.new_context(viewport=SCREEN)
        try:
            page = context.new_page()
            t0 = time.perf_counter()
            page.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
            page.wait_for_function(RENDERED, arg="", timeout=TIMEOUT_MS)
            times = {"": time.perf_counter() - t0}
            for path in pages[1:]:
                times[path] = _goto_page(page, path)
        finally:
            context.close()
        if r:
            for path, t in times.items():
                out[path].append(t)
    return out


def _interaction(page, path: str) -> tuple[str, float | None]:
    """One widget change on the rendered page ``path``: what it was and seconds until its rerun finished (None
    when the page has no such widget)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    candidates = ([INTERACTIONS[path]] if path in INTERACTIONS else []) + FALLBACKS
    found = [(w, page.locator(sel).first, how) for w, sel, how in candidates if page.locator(sel).count()]
    if not found:
        return "no widget found", None
    what, widget, how = found[0]
    t0 = page.evaluate(OBSERVE)
    if how in ("right", "left"):
        widget.focus()
        page.keyboard.press("ArrowRight" if how == "right" else "ArrowLeft")
    elif how.startswith("select:"):
        widget.click()
        options, want = page.locator("[role='option']"), how.split(":", 1)[1]
        option = options.nth(int(want[1:])) if want.startswith("#") else options.filter(has_text=want).first
        if not option.count():  # e.g. a select box with one option: nothing to change to
            page.keyboard.press("Escape")
            return f"{what} (no other option)", None
        option.click()
    else:
        widget.click()
    try:
        page.wait_for_function(RERUN_DONE, timeout=INTERACTION_TIMEOUT_MS)
    except PlaywrightTimeout:  # the change started no rerun (e.g. a select box with one option)
        return f"{what} (no rerun)", None
    return what, (page.evaluate("window.__rerun.done") - t0) / 1000


def _interactions(browser, url: str, pages: list[str], reps: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per page, ``reps`` times: open it afresh (a new session, the defaults), then one widget change."""
    times: dict[str, list[float]] = {p: [] for p in pages}
    what: dict[str, str] = {}
    context = browser.new_context(viewport=SCREEN)
    try:
        page = context.new_page()
        for _ in range(reps):
            for path in pages:
                page.goto(f"{url}/{path}", wait_until="commit", timeout=TIMEOUT_MS)
                page.wait_for_function(RENDERED, arg="", timeout=TIMEOUT_MS)
                what[path], t = _interaction(page, path)
                if t is not None:
                    times[path].append(t)
    finally:
        context.close()
    return times, what


def _committed_run_figures(browser, ctx: Ctx, logs: Path) -> tuple[list, list, dict]:
    """First visit and one interaction per page on the committed run, with the load average around them."""
    figures, checks = [], []
    pages = _pages()
    server = Server(COMMITTED, logs)
    try:
        server.wait_healthy()
        load0 = loadavg()
        visits = _first_visits(browser, server.url, pages, ctx.reps(1, 3))
        inter, what = _interactions(browser, server.url, pages, ctx.reps(1, 3))
        load1 = loadavg()
    finally:
        server.stop()
    for path in pages:
        name = path or "Home"
        figures.append(figure(f"first visit: {name} (committed run)", median(visits[path]), "s",
                              p95=p95(visits[path])))
        checks.append(check(f"first visit {name} (committed run)", median(visits[path]), "<=",
                            FIRST_VISIT_TARGET_S, "s"))
        if inter[path]:
            figures.append(figure(f"interaction: {name}, {what[path]}", median(inter[path]), "s",
                                  p95=p95(inter[path])))
            checks.append(check(f"interaction {name} (committed run)", median(inter[path]), "<=",
                                INTERACTION_TARGET_S, "s"))
    raw = {"first_visit_s": visits, "interaction_s": inter, "interaction": what, "load_avg": [load0, load1]}
    return figures, checks, raw


def _films(n: int, folder: Path) -> list[Path]:
    """``n`` different real films under unique names (so each request is a new image to the page)."""
    from bench.common import fixed_samples

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, s in enumerate(fixed_samples(n)):
        dst = folder / f"film_{i:03d}{Path(s.path).suffix}"
        shutil.copyfile(s.path, dst)
        out.append(dst)
    return out


def _cam_requests(page, server: Server, films: list[Path], warmup: int, n: int) -> dict:
    upload = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    want = None
    latencies, samples = [], []
    rss_warm = None
    for i, film in enumerate(films[: warmup + n]):
        if i:
            page.locator('[data-testid="stFileChipDeleteBtn"] button').first.click()
            page.wait_for_function(CAM_DONE, arg=["", 0], timeout=TIMEOUT_MS)
        t0 = time.perf_counter()
        upload.set_input_files([str(film)])
        page.wait_for_function(CAM_DONE, arg=[film.name, want or 1], timeout=TIMEOUT_MS)
        dt = time.perf_counter() - t0
        if want is None:
            want = page.locator('[data-testid="stMain"] [data-testid="stMetricValue"]').count()
        done = i + 1
        if done == warmup:
            rss_warm = server.rss_mb()
            samples.append((done, rss_warm))
        elif done > warmup:
            latencies.append(dt)
            if (done - warmup) % 10 == 0 or done == warmup + n:
                samples.append((done, server.rss_mb()))
    rss_end = samples[-1][1]
    return {"models_per_request": want, "rss_after_warmup_mb": rss_warm, "rss_after_mb": rss_end,
            "growth_mb": rss_end - rss_warm, "rss_samples": samples, "latency_s": latencies}


def run(ctx: Ctx) -> dict:
    from playwright.sync_api import sync_playwright

    from bench import fixture

    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"no Chromium at {CHROMIUM} (set CXR_CHROMIUM)")
    artifacts, made = fixture.ensure(ctx.work)
    logs = Path(tempfile.mkdtemp(prefix="bench-dash-", dir=ctx.work))
    figures, checks, raw = [], [], {"fixture": made, "logs": str(logs)}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        server = context = None
        try:
            if not ctx.quick:
                _cold_start(browser, artifacts, logs)  # warm-up: the OS page cache, Python's bytecode
            colds = []
            reps = ctx.reps(1, 3)
            for r in range(reps):
                healthy, rendered, server, context, page = _cold_start(browser, artifacts, logs, keep=r == reps - 1)
                colds.append((healthy, rendered))
            raw["cold_start_s"] = colds
            figures += [figure("cold start: server answers /_stcore/health", median([c[0] for c in colds]), "s"),
                        figure("cold start: until the Home leaderboard is rendered", median([c[1] for c in colds]),
                               "s")]

            for path in _pages()[1:]:  # the 8-model fixture run: every page once, for the memory baseline
                _goto_page(page, path)
            rss_pages = server.rss_mb()
            f, c, raw["committed_run"] = _committed_run_figures(browser, ctx, logs)
            figures += f
            checks += c

            # Grad-CAM requests and the server's memory.
            _goto_page(page, "Grad-CAM")
            warmup, n = ctx.reps(2, 10), ctx.reps(5, 100)
            films = _films(warmup + n, logs / "films")
            mem = _cam_requests(page, server, films, warmup, n)
            raw["gradcam"] = {**mem, "rss_after_pages_mb": rss_pages}
            figures += [figure("server RSS after visiting every page", rss_pages, "MB"),
                        figure(f"Grad-CAM request via the page ({mem['models_per_request']} maps, 64 px models)",
                               median(mem["latency_s"]), "s", p95=p95(mem["latency_s"])),
                        figure(f"server RSS growth over {n} Grad-CAM requests", mem["growth_mb"], "MB",
                               rss_after_warmup_mb=mem["rss_after_warmup_mb"], rss_after_mb=mem["rss_after_mb"])]
            checks.append(check(f"server memory growth over {n} Grad-CAM requests", mem["growth_mb"], "<=", 50.0,
                                "MB"))
        finally:
            if context is not None:
                context.close()
            if server is not None:
                server.stop()
            browser.close()
    shutil.rmtree(logs / "films", ignore_errors=True)
    return {"figures": figures, "checks": checks, "raw": raw}
