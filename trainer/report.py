"""The README's results table, generated from a run's artifacts (``python -m trainer report``).

The README holds the table between two markers; ``--update README.md`` rewrites just that part, and a test
checks that the README and the artifacts agree, so no number in the README is typed by hand.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from core import metrics, summary
from core.artifacts import ArtifactError, Run
from core.metrics import HEADLINE_RULE


def markers(run_id: str) -> tuple[str, str]:
    """The README markers around one run's generated tables (one block per committed run)."""
    return f"<!-- results:{run_id}:begin -->", f"<!-- results:{run_id}:end -->"


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}%"


def _duration(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def headline(m: dict, rule: str = HEADLINE_RULE) -> str:
    """One line of a split's figures (a metrics_<split>.json) at the model's headline operating point (its
    ``core.metrics.headline_rule``), chosen on validation."""
    at = m["at"][rule]
    return (f"{m['split']} n={m['n']} AUC {m['auc']:.4f} [{m['auc_ci'][0]:.4f}, {m['auc_ci'][1]:.4f}]  "
            f"acc {at['accuracy']:.3f} sens {at['sensitivity']:.3f} spec {at['specificity']:.3f}  "
            f"at val-chosen threshold {at['threshold']:.3f}" + ("" if rule == HEADLINE_RULE else f" ({rule})"))


def _cells(r: dict) -> str:
    """One markdown table line of a ``core.summary`` row."""
    auc = "–" if math.isnan(r["auc"]) else f"{r['auc']:.4f} [{r['auc_ci'][0]:.4f}, {r['auc_ci'][1]:.4f}]"
    size = "–" if r["input_size"] is None else f"{r['input_size']} px"
    best = "–" if r["best_epoch"] is None else r["best_epoch"]
    epochs = "–" if r["ensemble"] else f"{best}/{r['epoch'] or 0}" + (" †" if r["undertrained"] else "")
    seconds = 0.0 if math.isnan(r["train_seconds"]) else r["train_seconds"]
    params = 0.0 if math.isnan(r["params"]) else r["params"]
    return (f"| {r['model']} | {r['weights']} | {size} | {epochs} | {_duration(seconds)} | {params / 1e6:.2f} M | "
            f"{auc} | {_pct(r['accuracy'])} | {_pct(r['sensitivity'])} | {_pct(r['specificity'])} |")


def table(run: Run, split: str = "test") -> str:
    """Markdown table of every finished model of ``run`` on ``split`` at its validation-chosen threshold."""
    rs = summary.run_rows(run, split, finished_only=True)
    if not rs:
        raise ArtifactError(f"{run.dir}: no finished model has metrics for split {split!r}")
    rules = sorted({r["rule"] for r in rs})
    rule = metrics.rule_label(rules[0]) if len(rules) == 1 else "each model's own rule: " + ", ".join(rules)
    lines = [f"Split `{split}` of run `{run.id}` ({rs[0]['n']} images); threshold chosen on validation by "
             f"rule: {rule}. Epochs: best/trained. Time: this machine (2 CPU cores).", "",
             "| model | weights | input | epochs | train time | params | AUC [95% CI] | accuracy | sensitivity "
             "| specificity |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    lines += [_cells(r) for r in rs]
    total = sum(r["train_seconds"] for r in rs if not r["ensemble"] and not math.isnan(r["train_seconds"]))
    lines += ["", f"Total training time of these models: {_duration(total)}."]
    if any(r["undertrained"] for r in rs):
        lines[-1] += " " + summary.UNDERTRAINED_NOTE
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
    """Rewrite the block between the run's markers; returns whether anything changed."""
    path = Path(readme)
    text = path.read_text()
    begin, end = markers(run.id)
    if begin not in text or end not in text:
        raise ArtifactError(f"{path}: markers {begin} ... {end} not found")
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{block(run, splits)}\n{end}",
                 text, flags=re.S)
    if new != text:
        path.write_text(new)
    return new != text


def current(readme: str | Path, run_id: str) -> str:
    """The block the README holds now for ``run_id``."""
    begin, end = markers(run_id)
    text = Path(readme).read_text()
    return text.split(begin, 1)[1].split(end, 1)[0].strip()
