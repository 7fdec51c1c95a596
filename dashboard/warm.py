"""Warm the dashboard server in the background, so that no user waits for what every user needs.

Measured (BENCHMARKS.md, dashboard round): on a cold server the first Home took seconds of imports (scipy.stats
through ``core.evaluate.metrics``, torch through a model config's checks), the first Grad-CAM page another 3.6 s of
imports
(pytorch-grad-cam, timm) before loading a model, its ONNX session and the lung model, and every first plotly figure
1 s of plotly's lazy imports. ``start`` (called by the entrypoint on every rerun, acting once per process) runs all
of that in one daemon thread, in the order the pages need it, filling the same caches the pages read
(``st.cache_resource`` / ``st.cache_data``, see ``dashboard.common``): the imports; the default run's tables; the
Training curves page's figures of its default models (``dashboard.curves``); those models with their ONNX
sessions, population references and the lung model; the example films' maps. A page asking for something the
thread is computing waits for it (Streamlit computes each cache key once) instead of computing it twice. Anything
that fails here is only logged: the page that needs it will say why.

ONNX graphs are not committed (8.9 MB each for MobileNetV2 at 224 px): a missing one is exported here (11 s on a
loaded core), into the cache folder that outlives the server, never on a user's first request for a default model.
``python -m dashboard.warm [--artifacts DIR]`` does the same in the foreground (e.g. before a demo).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

__all__ = ["ENV_WARM", "start", "warm"]

ENV_WARM = "CXR_DASHBOARD_WARM"
THREAD = "dashboard-warm"
log = logging.getLogger("dashboard.warm")
_started: set[str] = set()
_lock = threading.Lock()


def start(root: Path) -> bool:
    """Warm ``root``'s default run in a background thread, once per process and root; True when it started now.
    Not under ``streamlit.testing`` (its runtime is a mock: a test must not pay for warming) nor with
    ``CXR_DASHBOARD_WARM=0``."""
    if os.environ.get(ENV_WARM, "1") == "0" or not _real_server():
        return False
    key = str(Path(root).resolve())
    with _lock:
        if key in _started:
            return False
        _started.add(key)
    _log_to_stderr()
    threading.Thread(target=warm, args=(Path(root),), name=THREAD, daemon=True).start()
    return True


def _real_server() -> bool:
    from streamlit.runtime import Runtime

    return Runtime.exists() and type(Runtime.instance()) is Runtime  # AppTest's is a MagicMock(spec=Runtime)


class _NotFromWarmThread(logging.Filter):
    """Streamlit warns once when a cached function runs outside a script run; here that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.current_thread().name != THREAD


def _log_to_stderr() -> None:
    """The server's terminal shows when warming ends (the benchmark waits for that line)."""
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(_NotFromWarmThread())
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def warm(root: Path) -> float:
    """Every step in turn (each one's failure logged, the rest still run); the seconds it took."""
    t0 = time.perf_counter()
    log.info("warm-up: started")
    steps = [("imports", _imports), ("default run tables", _tables), ("training curves", _curves),
             ("models", _models)]
    state: dict = {"root": root}
    for name, step in steps:
        t = time.perf_counter()
        try:
            step(state)
        except Exception as e:  # warming is a courtesy: the page that needs it reports the problem
            log.warning("warm-up: %s failed (%s: %s)", name, type(e).__name__, e)
        log.info("warm-up: %s in %.1f s", name, time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    log.info("warm-up: done in %.1f s", seconds)
    return seconds


def _imports(state: dict) -> None:
    """What the pages import, heaviest first, and plotly's lazily imported figure machinery."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    import core.evaluate.metrics  # noqa: F401  (scipy.stats)
    import core.evaluate.population  # noqa: F401
    import core.explain.cams  # noqa: F401  (torch, timm, pytorch-grad-cam)
    import core.models.inference  # noqa: F401
    import core.models.lungs  # noqa: F401
    import core.report.card  # noqa: F401
    import dashboard.figures  # noqa: F401

    fig = make_subplots(rows=1, cols=2)
    for kind in (go.Scatter, go.Bar, go.Box, go.Heatmap):
        fig.add_trace(kind(), row=1, col=1)
    fig.to_json()


def _tables(state: dict) -> None:
    """The default run's tables (what Home, curves, ROC, comparison and calibration read) and its test films."""
    from core.store import default_run, list_runs
    from dashboard import common, explain

    run = default_run(list_runs(state["root"]), state["root"])
    if run is None:
        return
    state["run"] = run
    for m in run.models:
        if m.has_history():
            common.cached_history(m)
        for split in m.splits():
            common.cached_predictions(m, split)
            if m.has_metrics(split):
                common.cached_metrics(m, split)
    source = next((m for m in run.models if "test" in m.splits()), None)
    if source is not None:
        explain.test_films(run, source)


def _curves(state: dict) -> None:
    """The Training curves page's first view of the default choice (its figures were most of that page's script,
    ``dashboard.curves``), built with exactly the arguments the page passes, so that the page finds them."""
    from dashboard import common, curves, tables

    run = state.get("run")
    if run is None:
        return
    names = set(common.default_models(run.models))
    trained = [e for e in common.entries(run) if e.label in names and not e.model.is_ensemble]
    histories = {}
    for e in trained:
        if e.model.has_history():
            h = tables.checked_history(common.cached_history(e.model), str(e.model.history_path))
            if not h.empty:
                histories[e.label] = h
    if histories:
        curves.default_figures(histories, {e.label: e.color for e in trained})


def _models(state: dict) -> None:
    """The default choice's networks, each with its ONNX session (built now when missing), population references
    and, through the example films' maps, the lung model and a first CAM (one-time costs of autograd and hooks);
    the example films' overlays as the Grad-CAM and Consensus pages first draw them."""
    from core.data.labels import POSITIVE
    from core.models import lungs
    from dashboard import common, explain
    from dashboard import population as pp

    run = state.get("run")
    if run is None:
        return
    names = set(common.default_models(run.models))
    for m in (m for m in run.models if m.name in names and not m.is_ensemble):
        cm = explain.cached_model(m)
        scaling = common.SiteChoice(common.TRAINING_DATA).scaling(m)
        for example in explain.EXAMPLES:
            image = explain.decoded(example.path, example.file)
            pixels = image.for_model(cm.loaded.input_size)
            result = explain.explain_one(cm, pixels, "Grad-CAM", POSITIVE)
            pp.check(m, cm.loaded, cm.lock, pixels, image.source)
            if lungs.WEIGHTS.is_file():
                explain.lung_focus(image.display(), result)
            view = explain.map_view(result, m.dir, m.name, explain.SHARED, scaling)  # as the pages draw it
            explain.overlay_png(image.display(), view, explain.DEFAULT_ALPHA)
        log.info("warm-up: %s ready", m.name)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from dashboard.common import artifacts_root

    p = argparse.ArgumentParser(prog="python -m dashboard.warm", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=None, help="artifacts root (default: as the dashboard's)")
    args = p.parse_args(argv)
    _log_to_stderr()
    warm(args.artifacts or artifacts_root())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
