"""Dashboard: server cold start, render time of every page with 8 models in a run, and the server's memory growth
over 100 Grad-CAM requests. The real server (``python -m streamlit run dashboard/Home.py ... -- --artifacts DIR``)
is driven by headless Chromium through Playwright (the system's /usr/bin/chromium; nothing is downloaded).

* Cold start: from launching the server process to the Home page's leaderboard rendered in a fresh browser tab
  with the script finished (``data-test-script-state="notRunning"``, no spinner). One untimed start first.
* Page render: a click on the page's sidebar link until the new page's title is shown, its script has finished
  and no spinner is left (Streamlit's running indicator gone). Every page once untimed, then timed rounds.
* Memory: on the Grad-CAM page (its two default models), each request uploads a different real film (a new
  image, so both maps are really computed: the page caches maps per image) and waits for both maps, then
  removes it. RSS of the server and its children (psutil) after a warm-up of 10 requests and after 100 more.
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
from bench.timing import Ctx, median, p95

CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
TIMEOUT_MS = 180_000
PAGES = ("", "Training_curves", "ROC_PR_confusion", "Model_comparison", "Grad-CAM", "Errors", "Calibration")

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

            # Page renders, navigating by the sidebar: one untimed pass, then timed rounds.
            order = list(PAGES[1:]) + [PAGES[0]]
            for path in order:
                _goto_page(page, path)
            times: dict[str, list[float]] = {p: [] for p in order}
            for _ in range(ctx.reps(1, 5)):
                for path in order:
                    times[path].append(_goto_page(page, path))
            raw["page_render_s"] = times
            rss_pages = server.rss_mb()
            for path in PAGES:
                name = path or "Home"
                figures.append(figure(f"page render: {name}", median(times[path]), "s", p95=p95(times[path])))
                checks.append(check(f"page render {name} (8 models)", median(times[path]), "<=", 2.0, "s"))

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
