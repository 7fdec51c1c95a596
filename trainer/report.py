"""The README's results table, generated from a run's artifacts (``python -m trainer report``).

The README holds the table between two markers; ``--update README.md`` rewrites just that part, and a test
checks that the README and the artifacts agree, so no number in the README is typed by hand.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from core.evaluate import metrics
from core.evaluate.metrics import HEADLINE_RULE
from core.report import comparison, summary
from core.store import ArtifactError, Run, population_metrics, population_specs, read_text


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
    ``core.evaluate.metrics.headline_rule``), chosen on validation."""
    at = m["at"][rule]
    return (f"{m['split']} n={m['n']} AUC {m['auc']:.4f} [{m['auc_ci'][0]:.4f}, {m['auc_ci'][1]:.4f}]  "
            f"acc {at['accuracy']:.3f} sens {at['sensitivity']:.3f} spec {at['specificity']:.3f}  "
            f"at val-chosen threshold {at['threshold']:.3f}" + ("" if rule == HEADLINE_RULE else f" ({rule})"))


SPLIT_NOTES = {"test": "carved from the training batch by patient: easy, nearly every model scores near 1",
               "official_val": "the data set's own validation films, from the shifted batch: enough to see a gross "
                               "shift, too few to rank models"}


def _split_note(split: str, n: int) -> str:
    notes = [SPLIT_NOTES.get(split, "")] + ([f"one film moves accuracy by {100 / n:.1f} points"] if n < 100 else [])
    return f"`{split}` {n} films" + (f" ({'; '.join(t for t in notes if t)})" if any(notes) else "")


def _auc(r: dict) -> str:
    return "–" if math.isnan(r["auc"]) else f"{r['auc']:.4f} [{r['auc_ci'][0]:.4f}, {r['auc_ci'][1]:.4f}]"


def _cells(r: dict, per_split: list[dict]) -> str:
    """One markdown table line: a model's facts from ``r``, then its figures on each split side by side."""
    size = "–" if r["input_size"] is None else f"{r['input_size']} px"
    best = "–" if r["best_epoch"] is None else r["best_epoch"]
    epochs = "–" if r["ensemble"] else f"{best}/{r['epoch'] or 0}" + (" †" if r["undertrained"] else "")
    seconds = 0.0 if math.isnan(r["train_seconds"]) else r["train_seconds"]
    figures = [f"{_auc(s)} | {_pct(s['accuracy'])} | {_pct(s['sensitivity'])} | {_pct(s['specificity'])}"
               for s in per_split]
    return f"| {r['model']} | {r['recipe']} | {r['weights']} | {size} | {epochs} | {_duration(seconds)} | " + \
        " | ".join(figures) + " |"


def table(run: Run, splits: list[str]) -> str:
    """Markdown table of every finished model of ``run``: its recipe and facts, then AUC, accuracy, sensitivity
    and specificity on each of ``splits`` side by side, at the threshold chosen on validation. Splits that no
    model has figures for are left out; a model without figures on a split gets dashes there."""
    splits = by_population(run, splits)
    rows = {split: {r["model"]: r for r in summary.run_rows(run, split, finished_only=True)} for split in splits}
    splits = [s for s in splits if rows[s]]
    if not splits:
        raise ArtifactError(f"{run.dir}: no finished model has metrics for any of {', '.join(rows)}")
    first = rows[splits[0]]
    blank = {"auc": math.nan, "accuracy": math.nan, "sensitivity": math.nan, "specificity": math.nan}
    rules = sorted({r["rule"] for r in first.values()})
    rule = metrics.rule_label(rules[0]) if len(rules) == 1 else "each model's own rule: " + ", ".join(rules)
    sizes = "; ".join(_split_note(s, int(next(iter(rows[s].values()))["n"])) for s in splits)
    lines = [f"Run `{run.id}`. Threshold chosen on validation by rule: {rule}. Splits: {sizes}. "
             "Epochs: best/trained. Time: this machine (2 CPU cores). Recipe: docs/recipes.md.", "",
             "| model | recipe | weights | input | epochs | train time | "
             + " | ".join(f"{s} AUC [95% CI] | {s} acc | {s} sens | {s} spec" for s in splits) + " |",
             "|---|---|---|---:|---:|---:|" + "---|---:|---:|---:|" * len(splits)]
    lines += [_cells(r, [rows[s].get(name, blank) for s in splits]) for name, r in first.items()]
    total = sum(r["train_seconds"] for r in first.values()
                if not r["ensemble"] and not math.isnan(r["train_seconds"]))
    lines += ["", f"Total training time of these models: {_duration(total)}."]
    if any(r["undertrained"] for r in first.values()):
        lines[-1] += " " + summary.UNDERTRAINED_NOTE
    for split in splits:
        lines += ["", compare(run, split, list(rows[split]))] if len(rows[split]) > 1 else []
    pooled = {s.partition(":")[0] for s in splits if ":" in s}
    for split in sorted(pooled):
        strata = strata_table(run, split)
        lines += ["", strata] if strata else []
    return "\n".join(lines)


def compare(run: Run, split: str, names: list[str]) -> str:
    """Which models differ from the best by more than chance on ``split`` (``core.report.comparison``)."""
    preds = {m.name: m.population_predictions(split) for m in run.models if m.name in names}
    rows = comparison.versus_best(preds)
    if not rows:
        return ""
    best = rows[0]["vs"]
    lines = [f"Paired comparison on `{split}`: each model against the best AUC (`{best}`) on the films both scored; "
             f"ΔAUC with its 95% interval (DeLong, unadjusted), p Holm-adjusted over the {len(rows) - 1} comparisons; "
             f"*differs* when that p < {comparison.ALPHA}.", "",
             f"| {split} | AUC | ΔAUC vs best [95% CI] | p (Holm) | differs |", "|---|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: -r["auc"]):
        if r["model"] == best:
            lines.append(f"| {r['model']} | {r['auc']:.3f} | best | – | – |")
            continue
        lo, hi = r["delta_ci"]
        lines.append(f"| {r['model']} | {r['auc']:.3f} | {_d(r['delta'])} [{_d(lo)}, {_d(hi)}] | "
                     f"{_p(r['p_holm'])} | {'yes' if r['differs'] else 'no'} |")
    return "\n".join(lines)


def _d(x: float) -> str:
    return f"{x:+.3f}".replace("-0.000", "+0.000")


def _p(p: float) -> str:
    return "–" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def by_population(run: Run, splits: list[str]) -> list[str]:
    """Each split that holds several sources replaced by one column per source (``test`` -> ``test:kermany``,
    ``test:nih_adult``): pooled over two populations, the big one hides the small one."""
    out = []
    for split in splits:
        sources = next((found for m in run.models if (found := m.populations(split))), [])
        out += sources if len(sources) > 1 else [split]
    return out


STRATA_SHOWN = ("view", "sex", "age")


def strata_table(run: Run, split: str) -> str:
    """Markdown table of every finished model's figures per stratum of ``split`` (view, sex, age band), at its
    own rule: AUC with a bootstrap interval, sensitivity and specificity with Wilson intervals. "" if none."""
    lines = []
    for art in run.models:
        try:
            whole, rule = art.metrics(split), metrics.headline_rule(art.config)
        except ArtifactError:
            continue
        for column in STRATA_SHOWN:
            for spec in population_specs(whole, split, column):
                try:
                    m = population_metrics(whole, spec, art.metrics_path(split))
                except ArtifactError:
                    continue
                at, ci = m["at"].get(rule, {}), (m.get("at_ci") or {}).get(rule, {})
                lines.append(f"| {art.name} | {spec.partition(':')[2]} | {m['n']} | {_auc(m)} | "
                             f"{_pct_ci(at.get('sensitivity'), ci.get('sensitivity'))} | "
                             f"{_pct_ci(at.get('specificity'), ci.get('specificity'))} |")
    if not lines:
        return ""
    return "\n".join([f"Per stratum of `{split}` (films whose manifest gives it), at each model's own rule; "
                      "AUC bootstrap 95% CI, sensitivity and specificity Wilson 95% CI.", "",
                      "| model | stratum | films | AUC [95% CI] | sens [95% CI] | spec [95% CI] |",
                      "|---|---|---:|---|---|---|", *lines])


def _pct_ci(x, ci) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    lo, hi = (list(ci or []) + [None, None])[:2]
    return f"{100 * x:.1f}%" + (f" [{100 * lo:.0f}, {100 * hi:.0f}]" if lo is not None and hi is not None else "")


def update(readme: str | Path, run: Run, splits: list[str]) -> bool:
    """Rewrite the block between the run's markers; returns whether anything changed."""
    path = Path(readme)
    text = read_text(path)  # never a pipe or device: one line, not a hang
    begin, end = markers(run.id)
    if begin not in text or end not in text:
        raise ArtifactError(f"{path}: markers {begin} ... {end} not found")
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{table(run, splits)}\n{end}",
                 text, flags=re.S)
    if new != text:
        path.write_text(new)
    return new != text


def current(readme: str | Path, run_id: str) -> str:
    """The block the README holds now for ``run_id``."""
    begin, end = markers(run_id)
    text = Path(readme).read_text()
    return text.split(begin, 1)[1].split(end, 1)[0].strip()
