"""Data wrangling for the dashboard: plain functions of dicts and DataFrames, no Streamlit, no file access.

Pages read artifacts (through ``core.store``) and hand what they read to these functions; tests call them
directly. Metric arithmetic comes from ``core.evaluate.metrics``; nothing here re-derives an AUC, a confusion count or a
calibration bin.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from core.data.labels import CLASSES
from core.data.layouts import sort_splits
from core.evaluate import metrics as cm
from core.evaluate.metrics import HEADLINE_RULE
from core.report import summary
from core.store import HISTORY_COLUMNS, HISTORY_FILE, RUN_FILE, ArtifactError, is_ensemble

RATE_NAMES = {"accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity", "f1": "F1"}
# Kermany et al., Cell 2018, pneumonia vs normal on their 624-image test set (for reference on the ROC only).
KERMANY_2018 = {"sensitivity": 0.932, "specificity": 0.901, "fpr": 1 - 0.901,
                "label": "Kermany et al. 2018 (sens 93.2%, spec 90.1%)"}


def _num(x) -> float:
    """A JSON number, or NaN for null / missing / junk."""
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def wilson_interval(k: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """``core.evaluate.metrics.wilson_interval`` as the tables need it: (NaN, NaN) when n is 0.

    >>> lo, hi = wilson_interval(8, 10); round(lo, 3), round(hi, 3)
    (0.49, 0.943)
    """
    lo, hi = cm.wilson_interval(k, n, level)
    return (math.nan, math.nan) if lo is None else (lo, hi)


def format_ci(lo: float, hi: float, digits: int = 3) -> str:
    if not (math.isfinite(_num(lo)) and math.isfinite(_num(hi))):
        return "–"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def format_seconds(s: float) -> str:
    s = _num(s)
    if not math.isfinite(s):
        return "–"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def default_split(splits: list[str]) -> str | None:
    """``test`` when it has predictions, else the first split there is."""
    return "test" if "test" in splits else (splits[0] if splits else None)


# --- runs and the leaderboard ----------------------------------------------------------------------------

def runs_table(runs: list[tuple[str, dict | None]]) -> pd.DataFrame:
    """One row per run from its run.json (``None`` for an unreadable one): data, layout, split sizes per class."""
    rows = []
    for run_id, info in runs:
        row = {"run": run_id}
        if info is None:
            row["created"] = f"{RUN_FILE} unreadable"
            rows.append(row)
            continue
        row["created"] = str(info.get("created", ""))[:10]
        row["data root"] = info.get("data_root_given") or info.get("data_root", "")
        counts = info.get("split_counts") or {}
        row[f"images per split ({' / '.join(CLASSES)})"] = " · ".join(
            f"{split} {' / '.join(str((counts.get(split) or {}).get(k, 0)) for k in CLASSES)}"
            for split in sort_splits(counts))
        row["skipped files"] = info.get("n_skipped", 0)
        row["models"] = len(info.get("models", []))
        rows.append(row)
    return pd.DataFrame(rows)


def operating_point(metrics: dict | None, rule: str = HEADLINE_RULE) -> dict:
    """The confusion metrics a metrics_<split>.json holds at one named threshold (empty when absent)."""
    if not metrics:
        return {}
    return dict((metrics.get("at") or {}).get(rule) or {})


def epochs_label(row: dict) -> str:
    """``best/trained`` epochs of a ``core.report.summary`` row (``–`` for an ensemble, which trains nothing itself),
    marked ``†`` when the row says it is under-trained (``core.report.summary.undertrained``, explained by
    ``core.report.summary.UNDERTRAINED_NOTE``), as the README's results table does."""
    if row["ensemble"]:
        return "–"
    if row["epoch"] is None:
        return ""
    label = f"{row['best_epoch'] if row['best_epoch'] is not None else '?'}/{row['epoch']}"
    return label + (" †" if row.get("undertrained") else "")


def board_splits(splits) -> list[str]:
    """The splits the leaderboard shows side by side: test first, then every other evaluated split except
    train and val (val chose the thresholds and the kept epoch, so its figures flatter every model). A split
    with figures per source (``test:kermany``, ``test:nih_adult``) is shown per source instead of pooled: pooled,
    the big source hides the small one."""
    found = set(splits)
    by_source = {s.partition(":")[0] for s in found if ":" in s}
    found = {s for s in found if s not in by_source and ("=" not in s)}
    test = sorted(s for s in found if s == "test" or s.startswith("test:"))
    others = [s for s in sort_splits(found) if s.partition(":")[0] not in ("train", "val", "test")]
    if len(test) > 1:  # one column per source already: the 16 official_val films go to the Populations page
        others = [s for s in others if s != "official_val"]
    return test + others


LEADERBOARD_METRICS = (("AUC", "auc"), ("sens", "sensitivity"), ("spec", "specificity"))


def board_label(split: str) -> str:
    """A leaderboard column's split: a source of the test split by its name alone (``test:nih_adult`` ->
    ``nih_adult``; the caption says they are test films), any other split as it is."""
    return split.partition(":")[2] if split.startswith("test:") else split


def summary_rows(entry: dict, splits: list[str]) -> dict[str, dict]:
    """``core.report.summary.model_row`` of one entry (``model`` and any of ``config``, ``status``, ``history``,
    ``metrics`` = {split: metrics dict}) on each split: the README's report reads the same rows."""
    mets = entry.get("metrics") or {}
    return {split: summary.model_row(entry["model"], entry.get("config"), entry.get("status"), mets.get(split),
                                     entry.get("history")) for split in splits}


def leaderboard(entries: list[dict], splits: list[str]) -> pd.DataFrame:
    """One row per model with AUC, sensitivity and specificity on each of ``splits`` side by side (columns
    ``AUC test``, ``AUC official_val``, ...), the first split's AUC interval (``95% CI``); ``status`` only when
    some model has not finished. Sorted by the first split's AUC, best first, unknown last."""
    rows = []
    for e in entries:
        per_split = summary_rows(e, splits or ["test"])
        first = per_split[(splits or ["test"])[0]]
        row = {"model": e["model"], "status": first["state"], "init": first["weights"],
               "95% CI": format_ci(*first["auc_ci"]), "epochs": epochs_label(first)}
        for short, key in LEADERBOARD_METRICS:
            for split in splits:
                row[f"{short} {board_label(split)}"] = per_split[split][key]
        rows.append(row)
    cols = ["model"] + [f"{s} {board_label(sp)}" for s, _ in LEADERBOARD_METRICS for sp in splits] + \
        ["95% CI", "init", "epochs", "status"]
    df = pd.DataFrame(rows, columns=cols)
    if (df["status"] == "finished").all():
        df = df.drop(columns="status")  # one column less to fit at 1440 px; shown whenever it says something
    if len(df) and df["init"].nunique() == 1:
        df = df.drop(columns="init")  # the same for every model: the caption says which
    if splits:
        df = df.sort_values(f"AUC {board_label(splits[0])}", ascending=False, na_position="last", kind="stable")
    return df.reset_index(drop=True)


def training_table(entries: list[dict]) -> pd.DataFrame:
    """How each model was trained: its recipe (``core.report.summary.recipe_label``), epochs (best/trained), time,
    parameters, input size, and the operating threshold chosen on validation (at the model's own headline rule).
    Where the starting weights came from is in each config.json; ensemble members are in ``ensemble_members``."""
    rows = []
    for e in entries:
        r = next(iter(summary_rows(e, sorted(e.get("metrics") or {}) or ["test"]).values()))
        rows.append({"model": e["model"], "recipe": r["recipe"], "input (px)": _num(r["input_size"]),
                     "params": r["params"], "train time": format_seconds(r["train_seconds"]),
                     "epochs (best/trained)": epochs_label(r), "threshold": r["threshold"]})
    return pd.DataFrame(rows, columns=["model", "recipe", "epochs (best/trained)", "train time", "params",
                                       "input (px)", "threshold"])


def ensemble_members(entries: list[dict]) -> str:
    """``name = mean of a, b`` for each ensemble among ``entries`` ("; "-joined), empty when there is none."""
    return "; ".join(f"{e['model']} = mean of {', '.join(map(str, (e.get('config') or {}).get('members') or []))}"
                     for e in entries if is_ensemble(e.get("config") or {}))


# --- training curves -------------------------------------------------------------------------------------

def checked_history(history: pd.DataFrame, where: str = HISTORY_FILE) -> pd.DataFrame:
    """The history with numeric columns, or an ``ArtifactError`` naming the first incomplete or non-numeric row
    (a torn or hand-edited file: the CSV parser alone accepts a half row and fills it with NaN)."""
    h = history.copy()
    for col in HISTORY_COLUMNS:
        h[col] = pd.to_numeric(h[col], errors="coerce")
    bad = h[HISTORY_COLUMNS].isna().any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ArtifactError(f"{where}: row {row + 1} is incomplete or not numeric "
                            f"({', '.join(c for c in HISTORY_COLUMNS if pd.isna(h[c].iloc[row]))}); "
                            "the file may be half-written or corrupt")
    return h


def ema(values, smoothing: float) -> np.ndarray:
    """Exponential moving average as TensorBoard draws it: weight ``smoothing`` on the past, bias-corrected."""
    s = pd.Series(np.asarray(values, dtype=float))
    if smoothing <= 0 or s.empty:
        return s.to_numpy()
    return s.ewm(alpha=1 - min(smoothing, 0.999), adjust=True, ignore_na=True).mean().to_numpy()


def best_epoch(history: pd.DataFrame) -> int | None:
    """The epoch with the highest validation AUC (what the trainer keeps as best), ``None`` without one."""
    auc = pd.to_numeric(history.get("val_auc"), errors="coerce") if len(history) else None
    if auc is None or auc.isna().all():
        return None
    return int(history["epoch"].iloc[int(np.nanargmax(auc.to_numpy()))])


def generalisation_gap(history: pd.DataFrame) -> pd.Series:
    """val_loss - train_loss per epoch: growing means over-fitting."""
    return pd.to_numeric(history["val_loss"], errors="coerce") - pd.to_numeric(history["train_loss"], errors="coerce")


_MARKDOWN_ACTIVE = re.compile(r"([\\`*\[\]()<>!#|~$])")  # not _ . - : (file names stay readable)


def plain(text) -> str:
    """Text from an artifact made inert for st.markdown/caption/error/info: the characters that make images, links,
    code, emphasis, headings, tables, strike-through, maths and Streamlit's ``:color[...]`` are escaped, so a
    status message or data root from someone's run folder shows as written and cannot embed a remote image (a
    tracking pixel in every viewer's browser) or a link."""
    return _MARKDOWN_ACTIVE.sub(r"\\\1", str(text))


def progress_line(name: str, status: dict) -> str:
    """One line for a model still training: epoch, ETA, heartbeat."""
    state = summary.state_of(status)
    epoch, epochs = status.get("epoch"), status.get("epochs")
    parts = [f"**{name}** is {state}"]
    if epoch is not None:
        parts.append(f"epoch {epoch}/{epochs if epochs is not None else '?'}")
    if state == "running" and status.get("eta_seconds") is not None:
        parts.append(f"ETA {format_seconds(status['eta_seconds'])}")
    if status.get("best_val_auc") is not None:
        parts.append(f"best val AUC {_num(status['best_val_auc']):.4f} (epoch {status.get('best_epoch', '?')})")
    if status.get("heartbeat"):
        parts.append(f"last heartbeat {plain(status['heartbeat'])}")
    if status.get("message"):
        parts.append(plain(status["message"]))  # from the run folder: shown as written, never as markdown
    return " · ".join(parts)


# --- ROC / PR / confusion --------------------------------------------------------------------------------

VAL_WARNING = ("**This is the `val` split: the thresholds and each model's kept epoch were chosen on it**, so its "
               "figures are optimistic. Judge the models on `test` and on any split from elsewhere.")
PRESETS_EXPLAINED = (
    "Presets, all chosen on validation, never on the split shown. **Youden**: the threshold with the best "
    "sensitivity + specificity. **Sensitivity ≥ x %**: the highest threshold that still finds x % of the pneumonia "
    "films; it can be *higher* than Youden's when Youden's already finds more than x % (a higher threshold calls "
    "fewer films PNEUMONIA: fewer false alarms, more missed cases).")


def preset_label(rule: str) -> str:
    """A threshold rule's short name for a button: ``core.evaluate.metrics.rule_label`` without its explanation."""
    return cm.rule_label(rule).split(" (")[0]


def points_table(points: dict[str, dict], presets: dict[str, dict]) -> pd.DataFrame:
    """One row per model at its current threshold, naming the preset it sits on (or "custom")."""
    rows = []
    for name, pt in points.items():
        rule = next((preset_label(r) for r, v in (presets.get(name) or {}).items()
                     if abs(v - pt["threshold"]) < 5e-4), "custom")
        rows.append({"model": name, "threshold": pt["threshold"], "set by": rule,
                     "sensitivity": pt["sensitivity"], "specificity": pt["specificity"], "PPV": pt["ppv"],
                     "NPV": pt["npv"], "F1": pt["f1"], "missed (FN)": pt["fn"], "false alarms (FP)": pt["fp"]})
    return pd.DataFrame(rows, columns=["model", "threshold", "set by", "sensitivity", "specificity", "PPV", "NPV",
                                       "F1", "missed (FN)", "false alarms (FP)"])


def threshold_presets(val_metrics: dict | None) -> dict[str, float]:
    """Named thresholds from metrics_val.json (chosen on validation), plus the fixed 0.5."""
    presets = {}
    for name, t in ((val_metrics or {}).get("thresholds") or {}).items():
        v = _num((t or {}).get("value"))
        if math.isfinite(v):
            presets[name] = v
    presets.setdefault("default", 0.5)
    return presets


def live_point(y, p, threshold: float, prevalence: float | None = None) -> dict:
    """Everything the ROC page shows at one threshold: ``core.evaluate.metrics.confusion_at`` plus the ROC point and
    PPV/NPV re-weighted to another prevalence (``core.evaluate.metrics.predictive_values``)."""
    c = cm.confusion_at(y, p, threshold)
    c["fpr"] = 1 - c["specificity"] if math.isfinite(c["specificity"]) else math.nan
    if prevalence is not None:
        c["ppv_at_prevalence"], c["npv_at_prevalence"] = cm.predictive_values(c["sensitivity"], c["specificity"],
                                                                              prevalence)
        c["prevalence"] = float(prevalence)
    return c


def rates_table(point: dict) -> pd.DataFrame:
    """Rows of the live rates at a threshold, for a small table under the confusion matrix."""
    rows = [("sensitivity", point["sensitivity"]), ("specificity", point["specificity"]),
            ("PPV", point["ppv"]), ("NPV", point["npv"]), ("F1", point["f1"]), ("accuracy", point["accuracy"])]
    if "prevalence" in point:
        pct = f"{point['prevalence']:.1%}"
        rows += [(f"PPV @ prev. {pct}", point["ppv_at_prevalence"]),
                 (f"NPV @ prev. {pct}", point["npv_at_prevalence"])]
    return pd.DataFrame(rows, columns=["metric", "value"])


def legend_label(name: str, metrics: dict | None, y=None, p=None) -> str:
    """``name AUC 0.912 [0.88, 0.94]``: AUC and interval from the metrics file, else computed from predictions."""
    if metrics and metrics.get("auc") is not None:
        a, ci = _num(metrics["auc"]), metrics.get("auc_ci") or [None, None]
    elif y is not None:
        a, ci = cm.auc(y, p), cm.bootstrap_auc_ci(y, p, n_boot=500)
    else:
        return name
    return f"{name} · AUC {a:.3f} {format_ci(_num(ci[0]), _num(ci[1]))}"


# --- model comparison ------------------------------------------------------------------------------------

def metric_intervals(name: str, metrics: dict, rule: str = HEADLINE_RULE) -> list[dict]:
    """AUC with its bootstrap interval (from the file) and accuracy, sensitivity, specificity with Wilson
    intervals from the confusion counts at the validation-chosen threshold. F1 is not a proportion of a fixed
    number of images, so it gets no Wilson interval (lo/hi NaN)."""
    ci = metrics.get("auc_ci") or [None, None]
    rows = [{"model": name, "metric": "AUC", "value": _num(metrics.get("auc")), "lo": _num(ci[0]),
             "hi": _num(ci[1]), "k": math.nan, "n": _num(metrics.get("n")), "interval": "bootstrap"}]
    at = operating_point(metrics, rule)
    if not at:
        return rows
    tp, fp, tn, fn = (int(at.get(k) or 0) for k in ("tp", "fp", "tn", "fn"))
    for key, k, n in (("accuracy", tp + tn, tp + fp + tn + fn), ("sensitivity", tp, tp + fn),
                      ("specificity", tn, tn + fp)):
        lo, hi = wilson_interval(k, n)
        rows.append({"model": name, "metric": key, "value": _num(at.get(key)), "lo": lo, "hi": hi, "k": k, "n": n,
                     "interval": "Wilson"})
    rows.append({"model": name, "metric": "F1", "value": _num(at.get("f1")), "lo": math.nan, "hi": math.nan,
                 "k": math.nan, "n": tp + fp + tn + fn, "interval": "none"})
    return rows


def comparison_long(metrics_by_model: dict[str, dict], rule: str = HEADLINE_RULE) -> pd.DataFrame:
    rows = [r for name, m in metrics_by_model.items() for r in metric_intervals(name, m, rule)]
    return pd.DataFrame(rows, columns=["model", "metric", "value", "lo", "hi", "k", "n", "interval"])


def comparison_table(long: pd.DataFrame, delong: pd.DataFrame) -> pd.DataFrame:
    """One sortable row per model: point estimates as numbers, intervals as text, DeLong p against the best.
    Accuracy stays in the chart only (it mixes sensitivity and specificity at this split's prevalence), so the
    table fits the page."""
    rows = []
    for name, g in long.groupby("model", sort=False):
        row = {"model": name}
        for _, r in g.iterrows():
            label = r["metric"]
            if label == "accuracy":
                continue
            row[label] = r["value"]
            if r["interval"] != "none":
                row[f"{label} 95% CI"] = format_ci(r["lo"], r["hi"])
        d = delong[delong["model"] == name] if len(delong) else delong
        if len(d):
            row["ΔAUC"] = d["ΔAUC"].iloc[0]
            row["DeLong p"] = d["p-value"].iloc[0]
            row["differs?"] = "yes" if d["p < 0.05"].iloc[0] else "no"
        elif len(delong):
            row["ΔAUC"], row["DeLong p"], row["differs?"] = 0.0, math.nan, "best"
        rows.append(row)
    df = pd.DataFrame(rows)
    first = [c for c in ("model", "AUC", "AUC 95% CI", "ΔAUC", "DeLong p", "differs?") if c in df]
    df = df[first + [c for c in df.columns if c not in first]]
    return df.sort_values("AUC", ascending=False, kind="stable").reset_index(drop=True) if "AUC" in df else df


# --- calibration -----------------------------------------------------------------------------------------

def calibration_from(metrics: dict | None, pred: pd.DataFrame | None, n_bins: int = 10) -> tuple[dict, str]:
    """Reliability bins from the metrics file, or recomputed from predictions (``core.evaluate.metrics``)."""
    cal = (metrics or {}).get("calibration")
    if cal and cal.get("mean_pred") is not None and cal.get("frac_pos") is not None:
        return cal, "metrics file"
    if pred is not None:
        return cm.calibration_bins(pred["label"], pred["probability"], n_bins), "recomputed from predictions"
    raise ValueError("neither a metrics file with calibration bins nor predictions")


def calibration_row(name: str, metrics: dict | None, pred: pd.DataFrame | None) -> dict:
    """ECE and Brier score: from the metrics file when it has them, else recomputed from predictions."""
    m = metrics or {}
    row = {"model": name, "ECE": _num(m.get("ece")), "Brier": _num(m.get("brier")), "n": _num(m.get("n")),
           "bins": m.get("ece_bins", 10), "source": "metrics file"}
    if pred is not None and not (math.isfinite(row["ECE"]) and math.isfinite(row["Brier"])):
        y, p = pred["label"], pred["probability"]
        row.update({"ECE": cm.ece(y, p, int(row["bins"] or 10)), "Brier": cm.brier(y, p), "n": len(pred),
                    "source": "recomputed from predictions"})
    return row


def calibration_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["model", "ECE", "Brier", "n", "source"])
    return df.sort_values("ECE", kind="stable", na_position="last").reset_index(drop=True)


# --- populations (per source and stratum) -------------------------------------------------------------------

POPULATION_COLUMNS = ["model", "population", "films", "AUC", "AUC 95% CI", "sensitivity", "sens 95% CI",
                      "specificity", "spec 95% CI", "lo", "hi"]


def population_label(spec: str) -> str:
    """``test:nih_adult`` -> ``test · nih_adult``; ``test:view=AP`` -> ``test · view AP``; ``adults`` as is."""
    split, _, stratum = spec.partition(":")
    return split if not stratum else f"{split} · {stratum.replace('=', ' ')}"


def population_table(figures_by_model: dict[str, dict[str, dict]], rules: dict[str, str]) -> pd.DataFrame:
    """One row per (model, population): films, AUC with its bootstrap interval, and sensitivity and specificity
    at the model's own rule with Wilson intervals. ``figures_by_model``: {model: {spec: metrics}} where a spec
    is a split or one of its strata (``core.store.population_metrics``)."""
    rows = []
    for model, by_spec in figures_by_model.items():
        rule = rules.get(model, HEADLINE_RULE)
        for spec, m in by_spec.items():
            at = (m.get("at") or {}).get(rule) or {}
            ci = (m.get("at_ci") or {}).get(rule) or {}
            lo, hi = (list(m.get("auc_ci") or []) + [None, None])[:2]
            sens_ci = (list(ci.get("sensitivity") or []) + [None, None])[:2]
            spec_ci = (list(ci.get("specificity") or []) + [None, None])[:2]
            if not sens_ci[0] and "tp" in at:  # a split's own figures: Wilson from its counts
                sens_ci = cm.wilson_interval(at["tp"], at["tp"] + at["fn"])
                spec_ci = cm.wilson_interval(at["tn"], at["tn"] + at["fp"])
            rows.append({"model": model, "population": population_label(spec), "films": m.get("n"),
                         "AUC": _num(m.get("auc")), "AUC 95% CI": format_ci(_num(lo), _num(hi)),
                         "sensitivity": _num(at.get("sensitivity")), "sens 95% CI": format_ci(*map(_num, sens_ci)),
                         "specificity": _num(at.get("specificity")), "spec 95% CI": format_ci(*map(_num, spec_ci)),
                         "lo": _num(lo), "hi": _num(hi)})
    return pd.DataFrame(rows, columns=POPULATION_COLUMNS)
