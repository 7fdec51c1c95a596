"""One film, every model: the consensus table, and the case exported as one self-contained HTML file.

Pure functions (no Streamlit): the page gathers one ``Verdict`` per model and hands them here. The HTML report
embeds every picture as a base64 PNG, so the one file can be mailed or archived and still shows everything.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.data.labels import CLASSES, POSITIVE
from core.evaluate.metrics import headline_rule
from core.store import ArtifactError, ModelArtifacts, now_iso


@dataclass
class Verdict:
    """What one model says about the film."""

    model: str
    p_raw: float
    p_shown: float  # calibrated when the model has a calibration, else raw
    calibrated: bool
    threshold_raw: float
    threshold_shown: float  # the validation threshold on the same scale as p_shown
    label: str
    overlay_png: bytes | None = None  # the map on the shared scale, with its colour bar
    note: str = ""  # e.g. an empty map, a failed sanity check
    figures: dict = field(default_factory=dict)  # test and official_val figures at the validation threshold
    population: str = ""  # the population check in a few words (dashboard.population.Check.short)
    population_note: str = ""  # ... in a sentence, with the model's figures for that population or "none"
    outside: bool = False  # the film lies outside every population the model was trained on


def split_figures(model: ModelArtifacts, splits=("test", "official_val"), population: str | None = None) -> dict:
    """AUC, sensitivity and specificity at the model's own validation threshold rule, per split the model has;
    with ``population`` (the training source a film lies in), that source's figures where a split has them: an
    adult film is shown the adults' test figures, not the pool's."""
    out = {}
    for split in splits:
        try:
            m, rule = model.metrics(split), headline_rule(model.config)
            if population and len(model.populations(split)) > 1:
                m = model.metrics(f"{split}:{population}")
        except ArtifactError:
            continue
        at = m.get("at", {}).get(rule, {})
        out[split] = {"n": m.get("n"), "auc": m.get("auc"), "sensitivity": at.get("sensitivity"),
                      "specificity": at.get("specificity")}
    return out


def agreement(verdicts: list[Verdict]) -> tuple[int, int]:
    """(models calling PNEUMONIA, models asked)."""
    return sum(v.label == CLASSES[POSITIVE] for v in verdicts), len(verdicts)


def _fmt(x, pct=False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def table(verdicts: list[Verdict]) -> pd.DataFrame:
    rows = []
    for v in verdicts:
        row = {"model": v.model, "P(PNEUMONIA)": round(v.p_shown, 4), "raw P": round(v.p_raw, 4),
               "threshold": round(v.threshold_shown, 4), "label": v.label, "population": v.population}
        for split in ("test", "official_val"):
            f = v.figures.get(split, {})
            row[f"{split} AUC"] = f.get("auc")
            row[f"{split} sens."] = f.get("sensitivity")
            row[f"{split} spec."] = f.get("specificity")
        rows.append(row)
    return pd.DataFrame(rows)


def shown_p(x: float) -> str:
    return "< 0.001" if x < 0.001 else ("> 0.999" if x > 0.999 else f"{x:.3f}")


def display_table(verdicts: list[Verdict]) -> pd.DataFrame:
    """``table`` as text for the page: probabilities never shown as a bare 0 or 1, figures to 3 places."""
    df = table(verdicts)
    for col in ("P(PNEUMONIA)", "raw P"):
        df[col] = [shown_p(v) for v in df[col]]
    df["threshold"] = [f"{v:.3f}" for v in df["threshold"]]
    for col in [c for c in df.columns if c.endswith(("AUC", "sens.", "spec."))]:
        df[col] = [_fmt(v) for v in df[col]]
    return df


def outside_notes(verdicts: list[Verdict]) -> list[str]:
    """The population warnings, one per model that finds the film outside its training populations."""
    return [v.population_note for v in verdicts if v.outside]


def table_csv(verdicts: list[Verdict]) -> bytes:
    return table(verdicts).to_csv(index=False).encode("utf-8")


def _img(png: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


_OUTSIDE_CELL = ' class="outside"'


def report_html(*, film_name: str, film_png: bytes, verdicts: list[Verdict], run_id: str, method: str,
                notice: str, citation: str, scale_note: str, profile: str = "profile: training data") -> str:
    """The case as one self-contained HTML page (pictures embedded); ``profile`` names the site profile in use."""
    k, n = agreement(verdicts)
    rows = "".join(
        f"<tr><td>{html.escape(v.model)}</td><td>{shown_p(v.p_shown)}{'' if v.calibrated else ' (raw)'}</td>"
        f"<td>{v.threshold_shown:.3f}</td><td><b>{html.escape(v.label)}</b></td>"
        f"<td{_OUTSIDE_CELL if v.outside else ''}>{html.escape(v.population or '–')}</td>"
        + "".join(f"<td>{_fmt(v.figures.get(s, {}).get('auc'))}</td>"
                  f"<td>{_fmt(v.figures.get(s, {}).get('sensitivity'), True)}</td>"
                  f"<td>{_fmt(v.figures.get(s, {}).get('specificity'), True)}</td>" for s in ("test", "official_val"))
        + "</tr>" for v in verdicts)
    maps = "".join(
        f'<figure class="model" data-model="{html.escape(v.model)}">'
        + (_img(v.overlay_png, f"{method} map of {v.model}") if v.overlay_png else "<p>no map</p>")
        + f"<figcaption><b>{html.escape(v.model)}</b>: P(PNEUMONIA) {shown_p(v.p_shown)} → {html.escape(v.label)}"
        + (f"<br><i>{html.escape(v.note)}</i>" if v.note else "") + "</figcaption></figure>" for v in verdicts)
    strip_md = notice.replace("**", "")
    warnings = "".join(f'<p class="outside">{html.escape(n.replace("**", "").replace("`", ""))}</p>'
                       for n in outside_notes(verdicts))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Case report: {html.escape(film_name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}
.notice{{background:#fff3cd;border:1px solid #e0c36c;padding:.8em;font-weight:bold}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:.3em .6em;text-align:right}}
td:first-child{{text-align:left}}.grid{{display:grid;grid-template-columns:repeat(3,1fr);gap:1em}}
figure{{margin:0}}img{{width:100%}}.film img{{max-width:480px}}
.outside{{background:#fde2e1;border:1px solid #d9534f;padding:.5em;font-weight:bold}}</style></head><body>
<p class="notice">{html.escape(strip_md)}</p>
<h1>Case report: {html.escape(film_name)}</h1>
<p>Run <code>{html.escape(run_id)}</code> · {html.escape(method)} · generated {now_iso()}.
<b>{k} of {n}</b> models call this film PNEUMONIA.</p>
<p class="profile">{html.escape(profile)}</p>
{warnings}
<figure class="film">{_img(film_png, "film " + film_name)}<figcaption>the film</figcaption></figure>
<h2>What each model says</h2>
<p>P(PNEUMONIA) calibrated on validation (temperature and bias) unless marked raw; label at each model's threshold
chosen on validation. Test is from the training hospital batch (easy); official_val is 16 films from another
batch (too few to conclude anything, but it shows the shift).</p>
<table><tr><th>model</th><th>P(PNEUMONIA)</th><th>threshold</th><th>label</th><th>population</th><th>test AUC</th>
<th>test sens.</th><th>test spec.</th>
<th>official_val AUC</th><th>official_val sens.</th><th>official_val spec.</th></tr>{rows}</table>
<h2>Where each model looks</h2><p>{html.escape(scale_note)}</p>
<div class="grid">{maps}</div>
<p>{html.escape(citation.replace('*', ''))}</p>
</body></html>
"""
