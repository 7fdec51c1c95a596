"""Dashboard: what a user waits for in the browser. The real server (``python -m streamlit run dashboard/Home.py
... -- --artifacts DIR``) is driven by headless Chromium through Playwright (the system's /usr/bin/chromium;
nothing is downloaded), at 1440×900. Every figure carries the 1-minute load average taken around it: timings on a
loaded machine are not figures of the code.

* Cold start: from launching the server process to the Home page's leaderboard rendered in a fresh browser tab
  with the script finished (``data-test-script-state="notRunning"``, no spinner). One untimed start first.
* First visit, per page, on the committed artifacts (``artifacts/``, its default run, each page's defaults): the
  server is started, Home is opened once (that starts the dashboard's background warm-up, ``dashboard/warm.py``),
  the bench waits until the server logs that warming is done (``WARM_WAIT_S`` at most; an app without a warm-up
  is not waited for), then a new browser session (a new user) opens Home by its URL and clicks each page's sidebar
  link in turn. Each page is timed until its title is shown, its script has finished, no spinner is left, and
  every picture and plotly chart in it is drawn. Beside each: the script's share (its rerun, from 'running' to
  'notRunning' in the page's clock) and, once, the same walk in a new tab of that browser (a new session whose
  browser has the app's code cached, as a returning user's: a fresh browser first parses Streamlit's and plotly's
  code). Pages are found from the sidebar, so the same bench measures an older checkout (``CXR_BENCH_APP=DIR``:
  the app to serve, for before/after figures).
* Interaction, per page: one widget change (``INTERACTIONS``) until the rerun it starts has finished (a
  MutationObserver on the app's script state, timed in the page's own clock).
* Upload → every chosen model's map, on the Grad-CAM and Consensus pages: each request uploads a different real
  adult test film (tests/data/nih_adult: a new image, so every map is really computed) and waits until the page
  shows that film with every model's map drawn. Once with the default run's default models, once with four
  224 px models (``FOUR_224``) chosen in the sidebar. One untimed upload first (it loads the models).
* Memory: on the Grad-CAM page of the 8-model fixture run (its two default models), the same requests; RSS of the
  server and its children (psutil) after a warm-up of 10 requests and after 100 more.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import REPO, fixture
from bench.common import fixed_samples
from bench.report import check, figure
from bench.timing import Ctx, loadavg, median, p95

CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
APP = Path(os.environ.get("CXR_BENCH_APP") or REPO)  # the checkout whose dashboard is served
TIMEOUT_MS = 180_000
SCREEN = {"width": 1440, "height": 900}
COMMITTED = REPO / "artifacts"
ADULT_FILMS = REPO / "tests" / "data" / "nih_adult"  # 36 adult test-split films of the default run, 224 px
FIRST_VISIT_TARGET_S = 1.5
INTERACTION_TARGET_S = 0.5
UPLOAD_TARGET_S = 2.0
WARM_WAIT_S = 240
WARM_DONE = "warm-up: done"
# Four 224 px networks of one committed run: the "4 models, 224 px" upload.
FOUR_224 = ("kermany-robust", ["mobilenet_v2_robust_224", "efficientnet_lite0_robust_224", "mobilenet_v2_lungs",
                               "mobilenet_v2_robust_long"])
# One widget change per page: (what it is, where: a CSS selector, how: "right"/"left" on a slider, "chip" removes
# the first chosen model, "select:TEXT" or "select:#N" picks an option, "click:#N" clicks the N-th match). A page
# not listed (or whose widget is gone) falls back to its first slider.
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
    "Where_models_look": ("CAM method: the next one", ".st-key-wl_method input", "select:#1"),
    "Consensus": ("example film: the next one", ".st-key-con_example button", "click:#1"),
    "Model_card": ("model: the next one", ".st-key-card_model input", "select:#1"),
    "Populations": ("per view (AP/PA) instead of per source", ".st-key-pop_column label", "click:#2"),
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
# The same for a page opened by its URL (an init script: the app does not exist yet when the page starts loading).
FIRST_RUN = """window.__rerun = {started: null, done: null};
new MutationObserver(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const state = app && app.getAttribute('data-test-script-state');
  if (state === 'running' && window.__rerun.started === null) window.__rerun.started = performance.now();
  if (state === 'notRunning' && window.__rerun.started !== null && window.__rerun.done === null)
    window.__rerun.done = performance.now();
}).observe(document, {subtree: true, childList: true, attributes: true,
                      attributeFilter: ['data-test-script-state']});"""
SCRIPT_S = "(window.__rerun.done - window.__rerun.started) / 1000"
# Everything drawn: no skeleton (an element whose code is still loading), every picture in the main area
# decoded, every plotly chart with its SVG.
DRAWN = """(() => {
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main || document.querySelector('[data-testid="stSkeleton"]')) return false;
  const imgs = [...main.querySelectorAll('[data-testid="stImage"] img')];
  if (!imgs.every(i => i.complete && i.naturalWidth > 0)) return false;
  return [...main.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('.main-svg'));
})()"""
# The script has finished, no spinner is left, the main area has a title other than `old` and is drawn.
RENDERED = """(old) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSpinner"]')) return false;
  const h1 = document.querySelector('[data-testid="stMain"] h1');
  return !!h1 && h1.textContent !== old && """ + DRAWN + """;
}"""
# After an upload: the script has finished and shows the film `name` (as a heading or a picture's caption: the
# uploader lists the name at once) with at least `want` pictures, all drawn.
MAPS_DONE = """([name, want]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSpinner"]')) return false;
  const main = document.querySelector('[data-testid="stMain"]');
  const shown = [...main.querySelectorAll('h3, [data-testid="stImageCaption"]')];
  if (!shown.some(e => e.textContent.includes(name))) return false;
  return main.querySelectorAll('[data-testid="stImage"] img').length >= want && """ + DRAWN + """;
}"""
IDLE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return !!app && app.getAttribute('data-test-script-state') === 'notRunning' &&
    !document.querySelector('[data-testid="stSpinner"]');
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run dashboard/Home.py`` (of ``APP``) on a free port; ``stop()`` ends it (only this process)."""

    def __init__(self, artifacts: Path, log_dir: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CXR_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("CXR_ARTIFACTS", None)
        self.log_path = log_dir / f"streamlit-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py", "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats",
             "false", "--server.fileWatcherType", "none", "--", "--artifacts", str(artifacts)],
            cwd=APP, env=env, stdout=self.log, stderr=subprocess.STDOUT)

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

    def logged(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_warm(self, timeout: float = WARM_WAIT_S) -> float | None:
        """Seconds until the server logs that its warm-up is done; None when the app has no warm-up."""
        t0 = time.perf_counter()
        time.sleep(1.0)  # the warm-up starts once the first page is drawn
        if "warm-up: started" not in self.logged():
            return None
        while WARM_DONE not in self.logged():
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the dashboard's warm-up did not end within {timeout} s (log {self.log.name})")
            time.sleep(0.25)
        return time.perf_counter() - t0

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


def _load() -> float:
    return loadavg()[0]


def _open_home(browser, url: str):
    """A new session (a new user) on Home; (context, page, seconds until Home is rendered)."""
    context = browser.new_context(viewport=SCREEN)
    context.add_init_script(FIRST_RUN)
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
    page.wait_for_function(RENDERED, arg="", timeout=TIMEOUT_MS)
    return context, page, time.perf_counter() - t0


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


def _pages(page) -> list[str]:
    """URL paths of Home ("") and of every page in the sidebar's navigation, in its order."""
    hrefs = page.eval_on_selector_all('[data-testid="stSidebarNav"] a', "els => els.map(e => e.href)")
    paths = [h.split("?")[0].rstrip("/").rsplit("/", 1)[-1] for h in hrefs]
    return [""] + [p for p in paths[1:] if p]


def _goto_page(page, path: str) -> float:
    """Click the sidebar link of ``path``; seconds until that page is rendered."""
    old = _h1(page)
    link = page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]').first
    page.evaluate(OBSERVE)
    t0 = time.perf_counter()
    link.click()
    page.wait_for_function(RENDERED, arg=old, timeout=TIMEOUT_MS)
    return time.perf_counter() - t0


def _script_seconds(page) -> float:
    """How long the last rerun ran (from 'running' to 'notRunning' in the page's clock): the server's share."""
    return float(page.evaluate(SCRIPT_S))


def _first_visits(browser, url: str, reps: int) -> tuple[dict, dict, dict, dict]:
    """Seconds to each page's first render in ``reps`` new sessions (Home by URL, the others by a sidebar
    click), the script's share of it (its rerun, running to finished) and the 1-minute load average beside each;
    then the same once more in a new tab of the last browser (a new session whose browser has the app's code
    cached, as a returning user's has: what is left is the page's own work)."""
    times: dict[str, list[float]] = {}
    scripts: dict[str, list[float]] = {}
    loads: dict[str, list[float]] = {}
    cached: dict[str, list[float]] = {}
    for r in range(reps):
        context, page, home = _open_home(browser, url)
        try:
            seen = _visit_all(page, home)
            if r == reps - 1:
                tab = context.new_page()
                t0 = time.perf_counter()
                tab.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
                tab.wait_for_function(RENDERED, arg="", timeout=TIMEOUT_MS)
                for path, (t, _) in _visit_all(tab, time.perf_counter() - t0).items():
                    cached[path] = [t]
        finally:
            context.close()
        for path, (t, script) in seen.items():
            times.setdefault(path, []).append(t)
            scripts.setdefault(path, []).append(script)
            loads.setdefault(path, []).append(_load())
    return times, scripts, loads, cached


def _visit_all(page, home: float) -> dict[str, tuple[float, float]]:
    """{path: (seconds to render, script seconds)}: Home (already open, ``home`` seconds), then every page."""
    seen = {"": (home, _script_seconds(page))}
    for path in _pages(page)[1:]:
        seen[path] = (_goto_page(page, path), _script_seconds(page))
    return seen


def _interaction(page, path: str) -> tuple[str, float | None]:
    """One widget change on the rendered page ``path``: what it was and seconds until its rerun finished (None
    when the page has no such widget)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    candidates = ([INTERACTIONS[path]] if path in INTERACTIONS else []) + FALLBACKS
    found = [(w, page.locator(sel).first, how) for w, sel, how in candidates if page.locator(sel).count()]
    if not found:
        return "no widget found", None
    what, widget, how = found[0]
    if how.startswith("click:#"):
        widget = page.locator(next(sel for w, sel, h in candidates if w == what)).nth(int(how.split("#")[1]))
        if not widget.count():
            return f"{what} (no such widget)", None
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


def _interactions(browser, url: str, pages: list[str], reps: int):
    """Per page, ``reps`` times: open it afresh (a new session, the defaults), then one widget change."""
    times: dict[str, list[float]] = {p: [] for p in pages}
    loads: dict[str, list[float]] = {p: [] for p in pages}
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
                    loads[path].append(_load())
    finally:
        context.close()
    return times, loads, what


# --- uploads ------------------------------------------------------------------------------------------------

def _idle(page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function(IDLE, timeout=TIMEOUT_MS)


def _choose_run(page, run_id: str) -> None:
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Run").first
    box.locator("input").click()
    page.locator("[role='option']").filter(has_text=run_id).first.click()
    _idle(page)


def _choose_models(page, names: list[str]) -> None:
    """The sidebar's model choice (``Models``, or an older page's ``Models (side by side)``) set to ``names``."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]').filter(has_text="Models").first
    while box.locator("button[aria-label^='Remove']").count():
        box.locator("button[aria-label^='Remove']").first.click()
        _idle(page)
    for name in names:
        box.locator("input").click()
        page.keyboard.type(name)
        page.locator("[role='option']").filter(has_text=name).first.click()
        page.keyboard.press("Escape")
        _idle(page)


def _films(n: int, folder: Path) -> list[Path]:
    """``n`` different real films under unique names (so each request is a new image to the page): the
    committed adult test films, then fixed samples of the data set."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(ADULT_FILMS.glob("*/*.png"))
    if len(sources) < n:
        sources += [Path(s.path) for s in fixed_samples(n - len(sources))]
    out = []
    for i, src in enumerate(sources[:n]):
        dst = folder / f"film_{i:03d}{src.suffix}"
        shutil.copyfile(src, dst)
        out.append(dst)
    return out


def _upload(page, film: Path, want: int) -> float:
    """Upload ``film`` (replacing an earlier upload); seconds until it shows with ``want`` pictures drawn."""
    chips = page.locator('[data-testid="stFileChipDeleteBtn"] button')
    while chips.count():
        chips.first.click()
        _idle(page)
    t0 = time.perf_counter()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(film)])
    page.wait_for_function(MAPS_DONE, arg=[film.name, want], timeout=TIMEOUT_MS)
    return time.perf_counter() - t0


def _pictures(page) -> int:
    return page.locator('[data-testid="stMain"] [data-testid="stImage"] img').count()


def _uploads(browser, url: str, films: list[Path], reps: int) -> tuple[list, list, dict]:
    """Upload → every map on Grad-CAM and Consensus: the default run's defaults, then ``FOUR_224``."""
    figures, checks, raw = [], [], {}
    cases = [("default run, default models", None), (f"{FOUR_224[0]}, four 224 px models", FOUR_224)]
    used = iter(films)
    for label, choose in cases:
        for path in ("Grad-CAM", "Consensus"):
            context, page, _ = _open_home(browser, url)
            try:
                page.goto(f"{url}/{path}", wait_until="commit", timeout=TIMEOUT_MS)
                page.wait_for_function(RENDERED, arg="", timeout=TIMEOUT_MS)
                if choose:
                    _choose_run(page, choose[0])
                    _choose_models(page, choose[1])
                first = next(used)
                _upload(page, first, 2)  # untimed: loads the models
                want = _pictures(page)
                times, loads = [], []
                for _ in range(reps):
                    times.append(_upload(page, next(used), want))
                    loads.append(_load())
            finally:
                context.close()
            name = f"upload → every map: {path}, {label} ({want - 1} maps)"
            figures.append(figure(name, median(times), "s", p95=p95(times), load_avg=loads))
            checks.append(check(name, median(times), "<=", UPLOAD_TARGET_S, "s"))
            raw[name] = {"seconds": times, "load_avg": loads}
    return figures, checks, raw


def _committed_run_figures(browser, ctx: Ctx, logs: Path) -> tuple[list, list, dict, list[str]]:
    """First visit, one interaction per page and uploads on the committed artifacts, with the load average."""
    figures, checks, table = [], [], []
    server = Server(COMMITTED, logs)
    try:
        server.wait_healthy()
        context, page, _ = _open_home(browser, server.url)  # starts the warm-up
        pages = _pages(page)
        context.close()
        warm = server.wait_warm()
        visits, scripts, visit_loads, cached = _first_visits(browser, server.url, ctx.reps(1, 3))
        inter, inter_loads, what = _interactions(browser, server.url, pages, ctx.reps(1, 3))
        films = _films(4 * (1 + ctx.reps(2, 5)), logs / "upload-films")
        up_figures, up_checks, up_raw = _uploads(browser, server.url, films, ctx.reps(2, 5))
    finally:
        server.stop()
    if warm is not None:
        figures.append(figure("warm-up after the first page (committed default run)", warm, "s"))
    for path in pages:
        name = path or "Home"
        v, vl = visits.get(path, []), visit_loads.get(path, [])
        figures.append(figure(f"first visit: {name} (committed run)", median(v), "s", p95=p95(v), load_avg=vl,
                              script_s=scripts.get(path, [])))
        if cached.get(path):
            figures.append(figure(f"first visit, browser with the app cached: {name} (committed run)",
                                  median(cached[path]), "s"))
        checks.append(check(f"first visit {name} (committed run)", median(v), "<=", FIRST_VISIT_TARGET_S, "s"))
        row = [name, median(v), median(scripts.get(path, [math.nan])), median(cached.get(path, [math.nan])),
               median(vl), None, None, what.get(path, "")]
        if inter[path]:
            figures.append(figure(f"interaction: {name}, {what[path]}", median(inter[path]), "s",
                                  p95=p95(inter[path]), load_avg=inter_loads[path]))
            checks.append(check(f"interaction {name} (committed run)", median(inter[path]), "<=",
                                INTERACTION_TARGET_S, "s"))
            row[5:7] = [median(inter[path]), median(inter_loads[path])]
        table.append(row)
    figures += up_figures
    checks += up_checks
    raw = {"first_visit_s": visits, "first_visit_script_s": scripts, "first_visit_cached_browser_s": cached,
           "first_visit_load": visit_loads,
           "interaction_s": inter,
           "interaction_load": inter_loads, "interaction": what, "warm_up_s": warm, "uploads": up_raw}
    return figures, checks, raw, _page_table(table, up_figures)


def _page_table(rows: list, uploads: list) -> list[str]:
    """Per page: first visit and interaction with the load average beside each, against the targets."""
    def cell(v, target):
        return " " * 14 if v is None else f"{v:6.2f} {'ok' if v <= target else 'NO':<3}    "

    out = [f"{'page':<20} {'first visit s':<14} {'script':>6} {'cached':>6} {'load':>5}   {'interaction s':<14} "
           f"{'load':>5}   widget",
           f"{'(targets)':<20} {'<= ' + str(FIRST_VISIT_TARGET_S):<14} {'':>6} {'':>6} {'':>5}   "
           f"{'<= ' + str(INTERACTION_TARGET_S):<14}"]
    for name, v, script, cached, vl, i, il, what in rows:
        out.append(f"{name:<20} {cell(v, FIRST_VISIT_TARGET_S)} {script:6.2f} {cached:6.2f} {vl:5.2f}   "
                   f"{cell(i, INTERACTION_TARGET_S)} {'' if il is None else f'{il:5.2f}':>5}   {what}")
    out.append("(script: the page's rerun, running to finished, in the browser's clock: the server's share of the "
               "first visit; cached: the first visit in a new tab of a browser that has the app's code cached)")
    for f in uploads:
        load = median(f["load_avg"]) if f.get("load_avg") else float("nan")
        out.append(f"{f['name']:<84} {f['value']:6.2f} {'ok' if f['value'] <= UPLOAD_TARGET_S else 'NO'} "
                   f"(<= {UPLOAD_TARGET_S}) load {load:.2f}")
    return out


def _cam_requests(page, server: Server, films: list[Path], warmup: int, n: int) -> dict:
    want = None
    latencies, samples = [], []
    rss_warm = None
    for i, film in enumerate(films[: warmup + n]):
        dt = _upload(page, film, want or 2)
        if want is None:
            want = _pictures(page)
        done = i + 1
        if done == warmup:
            rss_warm = server.rss_mb()
            samples.append((done, rss_warm))
        elif done > warmup:
            latencies.append(dt)
            if (done - warmup) % 10 == 0 or done == warmup + n:
                samples.append((done, server.rss_mb()))
    rss_end = samples[-1][1]
    return {"maps_per_request": (want or 1) - 1, "rss_after_warmup_mb": rss_warm, "rss_after_mb": rss_end,
            "growth_mb": rss_end - rss_warm, "rss_samples": samples, "latency_s": latencies}


def run(ctx: Ctx) -> dict:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"no Chromium at {CHROMIUM} (set CXR_CHROMIUM)")
    artifacts, made = fixture.ensure(ctx.work)
    logs = Path(tempfile.mkdtemp(prefix="bench-dash-", dir=ctx.work))
    figures, checks, raw = [], [], {"fixture": made, "logs": str(logs), "app": str(APP)}
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
                colds.append((healthy, rendered, _load()))
            raw["cold_start_s"] = colds
            figures += [figure("cold start: server answers /_stcore/health", median([c[0] for c in colds]), "s"),
                        figure("cold start: until the Home leaderboard is rendered", median([c[1] for c in colds]),
                               "s", load_avg=[c[2] for c in colds])]

            for path in _pages(page)[1:]:  # the 8-model fixture run: every page once, for the memory baseline
                _goto_page(page, path)
            rss_pages = server.rss_mb()
            f, c, raw["committed_run"], lines = _committed_run_figures(browser, ctx, logs)
            figures += f
            checks += c

            # Grad-CAM requests and the server's memory.
            _goto_page(page, "Grad-CAM")
            warmup, n = ctx.reps(2, 10), ctx.reps(5, 100)
            films = _films(warmup + n, logs / "films")
            mem = _cam_requests(page, server, films, warmup, n)
            raw["gradcam"] = {**mem, "rss_after_pages_mb": rss_pages}
            figures += [figure("server RSS after visiting every page", rss_pages, "MB"),
                        figure(f"Grad-CAM request via the page ({mem['maps_per_request']} maps, 64 px models)",
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
    shutil.rmtree(logs / "upload-films", ignore_errors=True)
    print("\n".join(["", f"dashboard ({APP}), committed artifacts, 1-minute load average beside each time:", *lines,
                     ""]), flush=True)
    return {"figures": figures, "checks": checks, "raw": raw}
