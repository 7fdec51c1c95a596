"""Consensus page end to end: a real film uploaded in headless Chromium, every chosen model's verdict and map, and
the exported single-file HTML report opened in the browser (it must hold the film and every chosen model).

Reuses the Streamlit server, browser and screenshot fixtures of tests/test_browser.py (same tiny run)."""

from __future__ import annotations

import csv
import io

import pytest

from tests.conftest import FULLRES, NIH_ADULT, SAMPLE_DATA, TINY_MODELS, need
from tests.test_browser import (
    COMMITTED,
    PAGE_TIMEOUT_MS,
    _assert_no_exception,
    _screenshot,
    _wait_idle,
    browser,
    committed_server,
    server,
    shots,
)

pytestmark = pytest.mark.browser
__all__ = ["browser", "committed_server", "server", "shots"]  # fixtures imported for pytest


def _upload_and_wait(page, path, pictures: int = 2) -> None:
    """Upload ``path`` and wait until the page shows it (its caption "name · W×H", not the example film the page
    opened on) with ``pictures`` pictures."""
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(path)])
    page.wait_for_function(f"document.body.innerText.includes('{path.name} · ') && document.querySelectorAll("
                           f"'[data-testid=\"stMain\"] [data-testid=\"stImage\"] img').length >= {pictures}",
                           timeout=PAGE_TIMEOUT_MS)
    _wait_idle(page)


def _inside_every_model(path) -> bool:
    """Whether the population check (the library, not the page) finds ``path`` inside every network of the
    committed default run."""
    import threading

    from core.data.images import load_for_model
    from core.models.inference import load_trained
    from core.store import default_run, list_runs
    from dashboard.population import check

    run = default_run(list_runs(COMMITTED), COMMITTED)
    for m in (m for m in run.models if not m.is_ensemble):
        loaded = load_trained(m)
        if check(m, loaded, threading.Lock(), load_for_model(path, loaded.input_size), path).outside:
            return False
    return True


def test_population_check_names_a_photograph_and_passes_an_adult_film(browser, committed_server, shots):
    """On the committed default run (children and adults) in a real browser: a photograph is named as outside the
    populations the models were trained on, beside the prediction; an adult NIH film is inside."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{committed_server}/Consensus", wait_until="domcontentloaded")
        _wait_idle(page)
        main = page.locator('[data-testid="stMain"]')
        _upload_and_wait(page, SAMPLE_DATA / "not_xray" / "coffee.jpg")
        _assert_no_exception(page, "Consensus, photograph")
        assert main.get_by_text("Outside the populations").count() >= 1
        _screenshot(page, shots / "22_consensus_photograph.png")
        adult = next(p for p in sorted((NIH_ADULT / "PNEUMONIA").glob("*.png")) if _inside_every_model(p))
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(adult)])
        # the film's caption under its picture ("name · W×H"), written when the page has scored it
        page.wait_for_function(f"document.body.innerText.includes('{adult.name} · ')", timeout=PAGE_TIMEOUT_MS)
        _wait_idle(page)
        _assert_no_exception(page, "Consensus, adult film")
        _screenshot(page, shots / "23_consensus_adult.png")
        assert main.get_by_text("Outside the populations").count() == 0  # the default run was trained on adults
    finally:
        context.close()


def test_consensus_report_holds_the_film_and_every_model(browser, server, shots, tmp_path):
    film = sorted((need(FULLRES) / "val" / "PNEUMONIA").glob("*.jpeg"))[0]
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    try:
        page.goto(f"{server}/Consensus", wait_until="domcontentloaded")
        _wait_idle(page)
        _assert_no_exception(page, "Consensus")
        _upload_and_wait(page, film, 1 + len(TINY_MODELS))  # the film plus one map per model
        main = page.locator('[data-testid="stMain"]')
        _assert_no_exception(page, "Consensus after upload")
        assert main.get_by_text(f"of {len(TINY_MODELS)}").count() >= 1  # "k of 2" models call it PNEUMONIA
        _screenshot(page, shots / "20_consensus.png")

        with page.expect_download(timeout=PAGE_TIMEOUT_MS) as dl:
            main.get_by_role("button", name="Download report (HTML)").click()
        report = tmp_path / "report.html"
        dl.value.save_as(report)
        with page.expect_download(timeout=PAGE_TIMEOUT_MS) as dl:
            main.get_by_role("button", name="Download table (CSV)").click()
        table = list(csv.DictReader(io.StringIO(dl.value.path().read_text())))
        assert sorted(r["model"] for r in table) == sorted(TINY_MODELS)
        assert all(0 <= float(r["P(PNEUMONIA)"]) <= 1 for r in table)

        # The report stands alone: opened from disk, no server, every picture embedded and decoded.
        page.goto(report.as_uri())
        assert film.name in page.title()
        assert page.locator('img[alt^="film"]').count() == 1
        for model in TINY_MODELS:
            fig = page.locator(f'figure[data-model="{model}"]')
            assert fig.count() == 1, model
            assert fig.locator("img").evaluate("img => img.complete && img.naturalWidth > 100")
        assert page.evaluate("[...document.images].every(i => i.src.startsWith('data:image/png;base64,'))")
        text = page.locator("body").inner_text()
        assert "Research use only" in text and "Kermany" in text and "official_val" in text
        page.screenshot(path=str(shots / "21_consensus_report.png"), full_page=True)
    finally:
        context.close()
