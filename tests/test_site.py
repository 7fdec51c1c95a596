"""Site profiles (issue 18): ``core/evaluate/site.py`` on the committed run's real predictions, and ``trainer site`` on
real
films of tests/data scored by committed models (a copy of the run, so the committed files are never written)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import KERMANY224, REPO

from core import store
from core.evaluate import site as site_mod
from core.store import (
    ArtifactError,
    Run,
    read_site_predictions,
    read_site_profile,
    run_site_names,
    site_names,
    write_json,
)

COMMITTED = REPO / "artifacts" / "kermany-robust"
MODELS = ("mobilenet_v2_robust_224", "efficientnet_lite0_robust_224", "robust_ensemble")
REFERENCE = "mobilenet_v2_robust_224"


def committed_model(name="mobilenet_v2_lungs_plain"):
    return Run(COMMITTED).model(name)


def val_fit(model):
    val = model.metrics("val")
    return dict(config=model.config, val_thresholds=val["thresholds"], val_scaling=store.read_scaling(model.dir),
                val_prevalence=float(val["prevalence"]))


# --- core/evaluate/site.py on the committed run's real predictions
# -------------------------------------------------------

def test_em_recovers_a_lower_prevalence_from_real_held_out_predictions():
    """The run's test split at 74 % PNEUMONIA, thinned to 25 %: EM on the validation-calibrated probabilities finds
    about 25 %, where the plain mean probability stays far off; the interval covers the truth."""
    m = committed_model()
    test = m.predictions("test")
    rng = np.random.default_rng(0)
    neg = test[test["label"] == 0]
    pos = test[test["label"] == 1].sample(n=len(neg) // 3, random_state=0)
    thin = pd.concat([neg, pos])
    truth = float(thin["label"].mean())
    q = store.read_scaling(m.dir)(thin["probability"].to_numpy())
    est = site_mod.estimate_prevalence(q, float(m.metrics("val")["prevalence"]), n_boot=200, seed=int(rng.integers(9)))
    assert abs(est["value"] - truth) < 0.04, (est, truth)
    assert est["ci"][0] <= truth <= est["ci"][1]
    assert abs(q.mean() - truth) > abs(est["value"] - truth)


def test_threshold_and_calibration_fall_back_below_their_minimum_and_say_so():
    m = committed_model()
    fit = val_fit(m)
    test = m.predictions("test")
    y, p = test["label"].to_numpy(), test["probability"].to_numpy()
    few = np.r_[np.flatnonzero(y == 0)[:2], np.flatnonzero(y == 1)[:10]]
    thr = site_mod.site_threshold(y[few], p[few], fit["config"], fit["val_thresholds"])
    assert thr["source"] == "val" and thr["value"] == thr["val_value"] and "at least 3" in thr["reason"]
    scaling, info = site_mod.site_calibration(y[few], p[few], fit["val_scaling"], val_prevalence=0.74, prevalence=0.3)
    assert info["source"] == "val+prior" and scaling.temperature == fit["val_scaling"].temperature
    assert scaling.bias < fit["val_scaling"].bias  # moved towards the lower prevalence
    some = np.r_[np.flatnonzero(y == 0)[:8], np.flatnonzero(y == 1)[:20]]
    _, info = site_mod.site_calibration(y[some], p[some], fit["val_scaling"])
    assert info["source"] == "site-bias"
    _, info = site_mod.site_calibration(y, p, fit["val_scaling"])
    assert info["source"] == "site" and info["n_fit"] == len(y)
    thr = site_mod.site_threshold(y, p, fit["config"], fit["val_thresholds"])
    assert thr["source"] == "site" and thr["rule"] == "sens95"
    assert (p[y == 1] >= thr["value"]).mean() >= 0.95


def test_learning_curve_error_shrinks_with_more_films_on_real_predictions():
    m = committed_model()
    test = m.predictions("test")
    rows = site_mod.learning_curve(test["label"], test["probability"], sizes=(10, 200), draws=60, seed=1,
                                   **val_fit(m))
    assert [r["n"] for r in rows] == [0, 10, 200]
    assert rows[0]["draws"] == 1 and rows[1]["draws"] == rows[2]["draws"] == 60
    assert rows[2]["sens_abs_p90"] < rows[1]["sens_abs_p90"]
    assert rows[2]["within_3_points"] > rows[1]["within_3_points"]
    assert all(0 <= r["ece_median"] < 0.5 for r in rows)
    assert site_mod.films_needed(rows, share=0.0) == 10 and site_mod.films_needed(rows, share=1.01) is None


def test_figures_have_intervals_that_hold_the_point_estimate():
    m = committed_model()
    test = m.predictions("test")
    f = site_mod.site_figures(test["label"], test["probability"], m.threshold(), prevalence=0.1, n_boot=300)
    for k in ("sensitivity", "specificity", "accuracy", "ppv", "npv"):
        lo, hi = f[f"{k}_ci"]
        assert lo <= f[k] <= hi, k
    assert f["ppv"] < 0.9 < f["npv"]  # at 10 % prevalence PPV falls and NPV rises
    assert f["tp"] + f["fn"] == f["n_pos"] and f["n"] == len(test)


# --- trainer site on real films ---------------------------------------------------------------------------------

def _split_of() -> dict[str, str]:
    table = Run(COMMITTED).split_table()
    return dict(zip(table["path"], table["split"]))


def films(split: str, label: str, n: int) -> list[Path]:
    """``n`` films of tests/data that the committed run put in ``split``."""
    where = _split_of()
    out = [p for p in sorted((KERMANY224 / "train" / label).iterdir())
           if where.get(f"train/{label}/{p.name}") == split][:n]
    if len(out) < n:
        pytest.skip(f"only {len(out)} {label} films of split {split} here")
    return out


def site_folder(root: Path, picked: list[Path], *, flat: bool = False) -> Path:
    """A site's folder of real films: Kermany layout (train/<class>/...) or, with ``flat``, no class folders."""
    for f in picked:
        target = root / (f.name if flat else Path("train") / f.parent.name / f.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    return root


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory) -> Path:
    """The committed run with three of its models (two networks and their ensemble), in a temporary folder."""
    base = tmp_path_factory.mktemp("site") / "artifacts" / "kermany-robust"
    base.mkdir(parents=True)
    for f in ("run.json", "split.csv", "skipped.csv"):
        shutil.copy2(COMMITTED / f, base / f)
    for m in MODELS:
        shutil.copytree(COMMITTED / m, base / m)
    return base


def site(run: Path, data: Path, name: str, *extra: str) -> int:
    from trainer.cli import main  # the real command line

    return main(["site", "--run", str(run), "--data", str(data), "--site", name, *extra])


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "sites" not in p.relative_to(folder).parts}


@pytest.mark.integration
def test_labelled_site_writes_a_profile_per_model_and_leaves_the_run_alone(run_copy, tmp_path, capsys):
    data = site_folder(tmp_path / "clinic", films("test", "NORMAL", 20) + films("test", "PNEUMONIA", 20))
    before = digest(run_copy)
    assert site(run_copy, data, "clinic_a", "--prevalence", "0.2") == 0
    assert digest(run_copy) == before  # the run's own files are untouched
    run = Run(run_copy)
    assert run_site_names(run) == ["clinic_a"] and all(site_names(m) == ["clinic_a"] for m in run.models)
    prof = read_site_profile(run.model(REFERENCE), "clinic_a")
    assert prof["n"] == 40 and prof["n_pos"] == 20 and prof["labelled"]
    assert prof["threshold"]["source"] == "site" and prof["threshold"]["rule"] == "sens95"
    assert prof["calibration"]["source"] == "site-bias"  # 40 films: fewer than MIN_FULL_FIT, bias only
    assert prof["prevalence"] == {"value": 0.2, "ci": None, "source": "given", "method": "given by the user"}
    assert prof["overlap"]["held_out_of_run"] == 40 and prof["overlap"]["held_out_splits"] == ["test"]
    assert any(f"about {site_mod.SUPPORTED_N}" in w for w in prof["warnings"])
    # the figures are those of the stored predictions, recomputed here
    pred = read_site_predictions(run.model(REFERENCE), "clinic_a")
    f = prof["figures"]["site_threshold"]
    y, p = pred["label"].to_numpy(int), pred["probability"].to_numpy()
    assert f["tp"] == int(((p >= f["threshold"]) & (y == 1)).sum()) and f["sensitivity_ci"][0] <= f["sensitivity"]
    # the ensemble is its members' mean on the same films
    ens = read_site_predictions(run.model("robust_ensemble"), "clinic_a")["probability"].to_numpy()
    members = [read_site_predictions(run.model(n), "clinic_a")["probability"].to_numpy() for n in MODELS[:2]]
    np.testing.assert_allclose(ens, np.mean(members, axis=0), atol=1e-7)
    # stored probabilities match the run's own test predictions of the same films (same model, same pixels)
    own = run.model(REFERENCE).predictions("test").set_index("path")["probability"]
    np.testing.assert_allclose(p, own.loc[pred["path"]].to_numpy(), atol=2e-4)
    assert site(run_copy, data, "clinic_a") == 2 and "--force" in capsys.readouterr().err


@pytest.mark.integration
def test_films_the_run_trained_on_are_refused_or_left_out(run_copy, tmp_path, capsys):
    fitted = films("val", "NORMAL", 3) + films("val", "PNEUMONIA", 3)
    data = site_folder(tmp_path / "leaky", fitted + films("test", "NORMAL", 10) + films("test", "PNEUMONIA", 10))
    assert site(run_copy, data, "leaky") == 2
    err = capsys.readouterr().err
    assert "6 of these films are films the run trained or chose its thresholds on" in err and "val" in err
    assert not any(site_names(m) for m in Run(run_copy).models if "leaky" in site_names(m))
    assert site(run_copy, data, "leaky", "--overlap", "drop", "--models", REFERENCE) == 0
    prof = read_site_profile(Run(run_copy).model(REFERENCE), "leaky")
    assert prof["n"] == 20 and prof["overlap"]["left_out_fitted"] == 6


@pytest.mark.integration
def test_a_film_renamed_is_still_recognised_by_its_content(run_copy, tmp_path, capsys):
    src = films("val", "PNEUMONIA", 1)[0]
    data = site_folder(tmp_path / "renamed", films("test", "NORMAL", 6) + films("test", "PNEUMONIA", 6))
    shutil.copy2(src, data / "train" / "PNEUMONIA" / "copy_of_a_film.jpeg")
    if not (REPO.parent / "shared" / "data" / "kermany224").is_dir():
        pytest.skip("the run's own films are not on this machine: only path matching is possible")
    assert site(run_copy, data, "renamed", "--models", REFERENCE) == 2
    assert "same content (sha256)" in capsys.readouterr().err


@pytest.mark.integration
def test_too_few_films_is_a_clear_error(run_copy, tmp_path, capsys):
    data = site_folder(tmp_path / "tiny", films("test", "NORMAL", 3) + films("test", "PNEUMONIA", 3))
    assert site(run_copy, data, "tiny", "--models", REFERENCE) == 2
    assert "6 usable films; a site profile needs at least 10" in capsys.readouterr().err


@pytest.mark.integration
def test_one_class_only_keeps_the_validation_threshold_and_says_what_cannot_be_measured(run_copy, tmp_path):
    data = site_folder(tmp_path / "healthy", films("test", "NORMAL", 14))
    assert site(run_copy, data, "healthy", "--models", REFERENCE) == 0
    m = Run(run_copy).model(REFERENCE)
    prof = read_site_profile(m, "healthy")
    assert prof["threshold"]["source"] == "val" and prof["threshold"]["value"] == pytest.approx(m.threshold())
    assert prof["calibration"]["source"] in ("val", "val+prior")
    assert any("one class only" in w and "specificity" in w for w in prof["warnings"])
    f = prof["figures"]["val_threshold"]
    assert f["sensitivity"] is None and f["auc"] is None and 0 <= f["specificity"] <= 1
    assert prof["prevalence"]["source"] == "estimated"  # 0 % labelled says nothing about the site


@pytest.mark.integration
def test_unlabelled_films_estimate_the_prevalence_with_an_interval(run_copy, tmp_path):
    data = site_folder(tmp_path / "inbox", films("test", "NORMAL", 15) + films("test", "PNEUMONIA", 5), flat=True)
    assert site(run_copy, data, "inbox", "--unlabelled", "--models", REFERENCE) == 0
    m = Run(run_copy).model(REFERENCE)
    prof = read_site_profile(m, "inbox")
    assert not prof["labelled"] and "figures" not in prof and prof["n"] == 20
    est = prof["prevalence"]
    assert est["source"] == "estimated" and est["ci"][0] <= est["value"] <= est["ci"][1]
    assert est["ci"][0] <= 0.25 <= est["ci"][1]  # the truth (5 of 20)
    assert prof["calibration"]["source"] == "val+prior"
    assert read_site_predictions(m, "inbox")["label"].isna().all()


@pytest.mark.integration
def test_a_tampered_profile_is_an_artifact_error(run_copy, tmp_path):
    m = Run(run_copy).model(REFERENCE)
    bad = m.dir / "sites" / "broken" / "profile.json"
    bad.parent.mkdir(parents=True)
    good = json.loads((m.dir / "sites" / "clinic_a" / "profile.json").read_text()) if site_names(m) else None
    if good is None:
        pytest.skip("no profile written yet")
    write_json(bad, {**good, "site": "broken", "threshold": {**good["threshold"], "value": 3.0}})
    with pytest.raises(ArtifactError, match="threshold"):
        read_site_profile(m, "broken")
    with pytest.raises(ArtifactError, match="usable name"):
        read_site_profile(m, "../clinic_a")


# --- the dashboard follows the chosen profile -------------------------------------------------------------------

def _page(name: str, root: Path, monkeypatch, site: str | None):
    from dashboard.common import SITE_KEY
    from tests.dashboard_app import page_app

    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    at = page_app(None if name == "Home.py" else name, timeout=120)
    if site:
        at.session_state[SITE_KEY] = site
    return at


@pytest.fixture
def profiled_root(run_copy, tmp_path) -> Path:
    """The run copy with site ``clinic_a`` (written by the first trainer test, or here)."""
    if "clinic_a" not in site_names(Run(run_copy).model(REFERENCE)):
        data = site_folder(tmp_path / "clinic", films("test", "NORMAL", 20) + films("test", "PNEUMONIA", 20))
        assert site(run_copy, data, "clinic_a", "--prevalence", "0.2") == 0
    return run_copy.parent


@pytest.mark.integration
def test_roc_page_switches_threshold_and_prevalence_to_the_site_profile(profiled_root, monkeypatch):
    import re

    m = Run(profiled_root / "kermany-robust").model(REFERENCE)
    prof = read_site_profile(m, "clinic_a")
    shown = {}
    for choice in (None, "clinic_a"):
        at = _page("2_ROC_PR_confusion.py", profiled_root, monkeypatch, choice)
        at.run(timeout=120)
        assert not at.exception, [e.value for e in at.exception]
        at.selectbox(key="roc_focus").set_value(REFERENCE).run(timeout=120)
        text = " ".join(md.value for md in at.markdown)
        shown[choice] = float(re.search(rf"\*\*{REFERENCE}\*\* at threshold ([\d.]+)", text).group(1))
        captions = " ".join(c.value for c in at.caption)
        prevalence = [n.value for n in at.number_input if n.key.startswith("roc_prevalence")]
        if choice:
            assert "profile: site `clinic_a`" in captions and prevalence == [pytest.approx(0.2)]
        else:
            assert "profile: training data" in captions and prevalence != [pytest.approx(0.2)]
    assert shown[None] == pytest.approx(m.threshold(), abs=1e-4)
    assert shown["clinic_a"] == pytest.approx(prof["threshold"]["value"], abs=1e-4)
    assert abs(shown["clinic_a"] - shown[None]) > 1e-3  # the two operating points differ on these films


@pytest.mark.integration
def test_errors_page_uses_the_site_threshold_and_names_the_profile(profiled_root, monkeypatch):
    m = Run(profiled_root / "kermany-robust").model(REFERENCE)
    prof = read_site_profile(m, "clinic_a")
    at = _page("5_Errors.py", profiled_root, monkeypatch, "clinic_a")
    at.session_state["err_model"] = REFERENCE
    at.session_state["err_cams"] = False
    at.run(timeout=120)
    assert not at.exception, [e.value for e in at.exception]
    (metric,) = [x for x in at.metric if x.label == "Threshold"]
    assert float(metric.value) == pytest.approx(prof["threshold"]["value"], abs=1e-3)
    assert any("profile: site `clinic_a`" in c.value for c in at.caption)


def test_consensus_report_names_the_profile():
    from dashboard import consensus as cs

    v = cs.Verdict(model="m", p_raw=0.4, p_shown=0.5, calibrated=True, threshold_raw=0.3, threshold_shown=0.4,
                   label="PNEUMONIA")
    png = (REPO / "docs" / "site-curve.png").read_bytes()
    page = cs.report_html(film_name="f.png", film_png=png, verdicts=[v], run_id="r", method="Grad-CAM", notice="n",
                          citation="c", scale_note="s", profile="profile: site clinic_a (from its films)")
    assert '<p class="profile">profile: site clinic_a (from its films)</p>' in page
    assert "profile: training data" in cs.report_html(film_name="f.png", film_png=png, verdicts=[v], run_id="r",
                                                      method="Grad-CAM", notice="n", citation="c", scale_note="s")


@pytest.mark.integration
def test_home_lists_the_site_figures_with_intervals(profiled_root, monkeypatch):
    prof = read_site_profile(Run(profiled_root / "kermany-robust").model(REFERENCE), "clinic_a")
    at = _page("Home.py", profiled_root, monkeypatch, "clinic_a")
    at.run(timeout=120)
    assert not at.exception, [e.value for e in at.exception]
    (table,) = [t for t in at.table if "sensitivity" in t.value.columns]
    row = table.value.set_index("model").loc[REFERENCE]
    f = prof["figures"]["site_threshold"]
    assert row["sensitivity"].startswith(f"{100 * f['sensitivity']:.1f}% [{100 * f['sensitivity_ci'][0]:.1f}, ")
    assert "given" in row["prevalence"] and row["films"] == 40


@pytest.mark.browser
def test_a_real_browser_switches_every_page_to_the_site_profile(profiled_root, tmp_path_factory):
    """Chromium: choose the site once on Home, then walk the pages by the sidebar: each says which profile it uses."""
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS, _assert_no_exception, _serve, _wait_idle

    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    serve = _serve(profiled_root, tmp_path_factory)
    url = next(serve)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            _wait_idle(page)
            sidebar = page.locator('[data-testid="stSidebar"]')
            page.get_by_role("combobox", name="Site profile").click()
            page.keyboard.type("clinic_a")
            page.keyboard.press("Enter")
            # the rerun the choice starts may not have begun when the page first looks idle: wait for its text
            expect = pytest.importorskip("playwright.sync_api").expect
            expect(page.locator('[data-testid="stMain"]')).to_contain_text("Site profile clinic_a",
                                                                           timeout=PAGE_TIMEOUT_MS)
            _wait_idle(page)
            for link in ("ROC PR confusion", "Errors", "Calibration", "Grad-CAM", "Consensus"):
                sidebar.locator('[data-testid="stSidebarNav"] a').filter(has_text=link).first.click()
                _wait_idle(page)
                _assert_no_exception(page, link)
                assert "Using site profile clinic_a" in sidebar.inner_text(), link
            sidebar.locator('[data-testid="stSidebarNav"] a').filter(has_text="ROC PR confusion").first.click()
            expect(page.locator('[data-testid="stMain"]')).to_contain_text("profile: site clinic_a",
                                                                           timeout=PAGE_TIMEOUT_MS)
            b.close()
    finally:
        serve.close()
