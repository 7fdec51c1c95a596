"""Consensus table and the self-contained HTML report (pure functions of dashboard/consensus.py)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from dashboard import consensus as cs


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _verdicts():
    figs = {"test": {"auc": 0.99, "sensitivity": 0.98, "specificity": 0.97}, "official_val": {"auc": 0.8}}
    return [cs.Verdict("a", 0.9, 0.97, True, 0.4, 0.3, "PNEUMONIA", _png(10), "", figs),
            cs.Verdict("b", 0.2, 0.00002, True, 0.4, 0.3, "NORMAL", _png(200), "Empty map: x", {}),
            cs.Verdict("c<script>", 0.6, 0.6, False, 0.5, 0.5, "PNEUMONIA", None)]


def test_agreement_and_tables():
    v = _verdicts()
    assert cs.agreement(v) == (2, 3)
    shown = cs.display_table(v)
    assert list(shown["P(PNEUMONIA)"]) == ["0.970", "< 0.001", "0.600"]  # never a bare 0
    assert list(shown["test AUC"]) == ["0.990", "–", "–"]
    csv = cs.table_csv(v).decode()
    assert csv.splitlines()[0].startswith("model,P(PNEUMONIA),raw P,threshold,label") and len(csv.splitlines()) == 4


def test_report_embeds_every_picture_and_escapes_names():
    v = _verdicts()
    html = cs.report_html(film_name="film.png", film_png=_png(128), verdicts=v, run_id="r", method="Grad-CAM",
                          notice="**Research use only**", citation="Kermany *et al.*", scale_note="one scale")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3  # the film and two maps (model c has none)
    assert Image.open(io.BytesIO(base64.b64decode(images[0]))).getpixel((0, 0)) == 128
    assert "<script>" not in html and "c&lt;script&gt;" in html
    assert "Research use only" in html and "**" not in html and "Kermany et al." in html
    assert "<b>2 of 3</b>" in html and "(raw)" in html and "Empty map: x" in html
    assert 'data-model="a"' in html and "http" not in html.replace("https://", "")  # nothing fetched from outside
