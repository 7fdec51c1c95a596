"""The README's results table, generated from a run's artifacts (``python -m trainer report``).

The README holds the table between two markers; ``--update README.md`` rewrites just that part, and a test
checks that the README and the artifacts agree, so no number in the README is typed by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

from core.artifacts import ArtifactError, Run

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _duration(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def rows(run: Run, split: str) -> list[dict]:
    out = []
    for art in run.models:
        try:
            cfg, st, m = art.config, art.status(), art.metrics(split)
        except ArtifactError:
            continue  # unfinished or broken models are not in the table
        if st.get("state") != "finished":
            continue
        at = m["at"]["youden"]
        hist_epochs = st.get("epoch") or 0
        out.append({
            "model": art.name, "arch": cfg.get("arch"), "input": cfg.get("input_size"),
            "pretrained": "ImageNet" if cfg.get("pretrained") else "scratch",
            "epochs": f"{st.get('best_epoch', '–')}/{hist_epochs}" if cfg.get("arch") != "ensemble" else "–",
            "seconds": float(st.get("train_seconds") or 0.0), "params": int(cfg.get("params") or 0),
            "auc": m["auc"], "ci": m["auc_ci"], "acc": at["accuracy"], "sens": at["sensitivity"],
            "spec": at["specificity"], "n": m["n"],
        })
    return out


def table(run: Run, split: str = "test") -> str:
    """Markdown table of every finished model of ``run`` on ``split`` at its validation-chosen threshold."""
    rs = rows(run, split)
    if not rs:
        raise ArtifactError(f"{run.dir}: no finished model has metrics for split {split!r}")
    lines = [f"Split `{split}` of run `{run.id}` ({rs[0]['n']} images); threshold chosen on validation "
             "(Youden's J). Epochs: best/trained. Time: this machine (2 CPU cores).", "",
             "| model | weights | input | epochs | train time | params | AUC [95% CI] | accuracy | sensitivity "
             "| specificity |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rs:
        auc = "–" if r["auc"] is None else f"{r['auc']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]"
        size = "–" if r["input"] is None else f"{r['input']} px"
        lines.append(f"| {r['model']} | {r['pretrained']} | {size} | {r['epochs']} | {_duration(r['seconds'])} | "
                     f"{r['params'] / 1e6:.2f} M | {auc} | {_pct(r['acc'])} | {_pct(r['sens'])} | {_pct(r['spec'])} |")
    total = sum(r["seconds"] for r in rs if r["arch"] != "ensemble")
    lines += ["", f"Total training time of these models: {_duration(total)}."]
    return "\n".join(lines)


def block(run: Run, splits: list[str]) -> str:
    parts = []
    for split in splits:
        try:
            parts.append(table(run, split))
        except ArtifactError:
            continue
    return "\n\n".join(parts)


def update(readme: str | Path, run: Run, splits: list[str]) -> bool:
    """Rewrite the block between the markers; returns whether anything changed."""
    path = Path(readme)
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ArtifactError(f"{path}: markers {BEGIN} ... {END} not found")
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{block(run, splits)}\n{END}",
                 text, flags=re.S)
    if new != text:
        path.write_text(new)
    return new != text


def current(readme: str | Path) -> str:
    text = Path(readme).read_text()
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
