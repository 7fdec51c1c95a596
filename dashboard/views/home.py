"""Home: the runs in the artifacts folder and a leaderboard of the selected run's models."""

import streamlit as st

from core.evaluate import metrics
from core.report import summary
from core.store import (
    CONFIG_FILE,
    HISTORY_FILE,
    SKIPPED_FILE,
    STATUS_FILE,
    ArtifactError,
    ModelArtifacts,
    list_runs,
    model_folders,
    population_metrics,
    population_specs,
    recommended,
)
from dashboard import tables
from dashboard.common import (
    DEFAULT_TOP,
    NOTICE,
    cached_history,
    cached_metrics,
    choice,
    entries,
    guard,
    plain,
    site_table,
)

SHIFT_CAVEAT = (
    "**Read the columns side by side.** `test` was carved from the same collection as the training films (by "
    "patient), so it is easy: nearly every model scores near 1. `official_val` is the data set's own validation "
    "folder, a separately collected batch: a first look at how a model holds up on films from elsewhere, but "
    "with very few films (see *n*), so its figures swing by whole films. A headline figure from `test` alone "
    "says nothing about new hospitals.")


POPULATION_CAVEAT = (
    "**One column per population.** `test:kermany` are held-out children (the training hospital's batch: easy), "
    "`test:nih_adult` held-out adults from another hospital; pooled, the 784 children would hide the 87 adults. "
    "One threshold serves every film. The *Populations* page has every population with intervals, per view, sex "
    "and age band, and the 16 `official_val` films.")


def run_rows(run) -> list[dict]:
    """Everything the leaderboard needs of each model of ``run`` (``None`` where a file is unreadable)."""
    rows = []
    for m in run.models:
        e = {"model": m.name, "config": None, "status": None, "history": None, "metrics": {}}
        with guard(f"{m.name}: {CONFIG_FILE}"):
            e["config"] = m.config
        with guard(f"{m.name}: {STATUS_FILE}"):
            e["status"] = m.status()
        if m.has_history() and not m.is_ensemble:
            with guard(f"{m.name}: {HISTORY_FILE}"):
                e["history"] = tables.checked_history(cached_history(m), str(m.history_path))
        for split in m.splits():
            if split != "val" and (m.has_metrics(split) or
                                   (e["status"] or {}).get("state") == "finished"):
                with guard(f"{m.name}: {split} metrics"):
                    e["metrics"][split] = cached_metrics(m, split)
                    specs = population_specs(e["metrics"][split], split)
                    for spec in specs if len(specs) > 1 else []:  # several sources: one column each
                        e["metrics"][spec] = population_metrics(e["metrics"][split], spec, m.dir)
        rows.append(e)
    listed = {m.name for m in run.models}  # a model that failed before its config.json still has a status
    for name in sorted(model_folders(run.dir) - listed):
        with guard(f"{name}: {STATUS_FILE}"):
            rows.append({"model": name, "status": ModelArtifacts(run.dir, name).status()})
    return rows


def init_note(board, rows: list[dict]) -> str:
    """What the init column means, or, when every model shares its starting weights (no column), what they are."""
    if "init" in board.columns:
        return "init: ImageNet weights or from scratch."
    first = summary.weights_label(next((e.get("config") for e in rows if e.get("config")), None))
    return f"Every model starts from {'ImageNet weights' if first == 'ImageNet' else 'scratch'}."


def split_sizes(rows: list[dict], splits: list[str]) -> str:
    sizes = {s: next((int(e["metrics"][s]["n"]) for e in rows if s in (e.get("metrics") or {})
                      and e["metrics"][s].get("n") is not None), None) for s in splits}
    return ", ".join(f"`{s}` n = {n}" for s, n in sizes.items() if n is not None)


def rule_labels(rows: list[dict]) -> str:
    """The threshold rules of the shown models (each model's own headline rule), for captions."""
    rules = sorted({metrics.headline_rule(e.get("config") or {}) for e in rows})
    return "; ".join(metrics.rule_label(r) for r in rules) or metrics.rule_label(metrics.HEADLINE_RULE)


def show_leaderboard(rows: list[dict]) -> None:
    splits = tables.board_splits(s for e in rows for s in (e.get("metrics") or {}))
    board = tables.leaderboard(rows, splits)
    fmt = {c: st.column_config.NumberColumn(format="%.3f") for c in board.columns if c.split(" ")[0] in
           ("AUC", "sens", "spec") and "CI" not in c}
    fmt["model"] = st.column_config.TextColumn(width=180)
    st.container(key="home_leaderboard").dataframe(board, hide_index=True, placeholder="–", column_config=fmt,
                                                   height="content")
    first, rules = (splits[0] if splits else ""), rule_labels(rows)
    st.caption(f"{split_sizes(rows, splits)}. AUC: area under the ROC curve; 95% CI: its stratified bootstrap "
               f"interval on `{first}`. sens / spec: sensitivity and specificity at the threshold chosen on "
               f"validation ({rules}). {init_note(board, rows)} Epochs: best/trained (an ensemble "
               "trains none). " + (summary.UNDERTRAINED_NOTE if board["epochs"].str.endswith("†").any() else ""))
    if any(":" in s for s in splits):
        st.info(POPULATION_CAVEAT)
    elif len(splits) > 1:
        st.info(SHIFT_CAVEAT)
    with st.expander("How each model was trained, and its threshold"):
        st.container(key="home_training").dataframe(
            tables.training_table(rows), hide_index=True, placeholder="–", height="content",
            column_config={"params": st.column_config.NumberColumn(format="localized"),
                           "threshold": st.column_config.NumberColumn(
                               format="%.3f", help=f"the operating threshold, chosen on validation ({rules})"),
                           "input (px)": st.column_config.NumberColumn(format="%d"),
                           "recipe": st.column_config.TextColumn(help="what made it: docs/recipes.md")})
        members = tables.ensemble_members(rows)
        st.caption("Recipe: lung crop = the film cropped to its lung fields; CLAHE = contrast-limited histogram "
                   "equalisation; strong aug = random-resized crops, wider photometric changes, noise; EMA = "
                   f"weight averaging (docs/recipes.md). Starting weights: each model's {CONFIG_FILE}."
                   + (f" Ensembles: {members}." if members else ""))
    for e in rows:
        s = e.get("status") or {}
        if s.get("state") == "failed":
            st.error(f"{e['model']} failed: {plain(s.get('message') or 'no message')}")
        elif summary.state_of(s) == "stale":
            st.warning(f"{e['model']}: status says running but no heartbeat for over 10 minutes; the trainer "
                       "probably died. Continue it with `python -m trainer train ... --resume`.")


ctx = choice()
run, compare, site = ctx.run, ctx.compare, ctx.site
st.title("Chest X-ray classifiers: PNEUMONIA vs NORMAL")
st.warning(NOTICE)

infos = []
for r in list_runs(ctx.root):
    try:
        infos.append((r.id, r.info))
    except ArtifactError as e:
        infos.append((r.id, None))
        st.error(f"run {r.id}: {plain(e)}")

pick = recommended(ctx.root)
if pick:
    st.info(f"**Recommended for new films: `{pick[0]}/{pick[1]}`**, chosen by a rule written before it was scored "
            "(docs/recipes.md, Populations). Check the *Populations* page for how it does on each population, and "
            "the population check beside each prediction on the Grad-CAM and Consensus pages.")
title = f"Leaderboard · run `{run.id}`" + (f" and `{compare.id}`" if compare else "")
st.subheader(title)
with guard(f"run {run.id}"):
    info = run.info
    n_skipped = int(info.get("n_skipped", 0) or 0)
    st.caption(f"Data {plain(info.get('data_root_given') or info.get('data_root', '?'))} "
               f"({plain(info.get('data_layout', '?'))} layout), created "
               f"{plain(str(info.get('created', '?'))[:19].replace('T', ' '))} · **{n_skipped} file(s) skipped** "
               "as unreadable")
    if n_skipped:
        with st.expander(f"{n_skipped} skipped file(s)"), guard(SKIPPED_FILE):
            st.dataframe(run.skipped(), hide_index=True, placeholder="–")

rows = run_rows(run)
if compare is not None:
    rows += [{**e, "model": f"{compare.id}/{e['model']}"} for e in run_rows(compare)]
if rows:
    show_leaderboard(rows)
else:
    st.info(f"Run `{run.id}` has no models yet.")
if site.is_site:  # the chosen site's own figures, beside the run's
    st.subheader(f"Site profile `{plain(site.name)}`")
    st.container(key="home_site").table(site_table(run, site))
    st.caption(f"{site.describe()}. At the site threshold, on the site's own films (in-sample where the threshold "
               "was chosen on them); 95% bootstrap intervals; PPV/NPV at the profile's prevalence. "
               "docs/site-curve.md: how many films a site threshold needs.")

st.caption(f"The other pages compare the models chosen in the sidebar ({len(ctx.chosen)} of "
           f"{len(entries(run, compare))}): by default the {DEFAULT_TOP} best by validation AUC and the ensemble.")
st.subheader("Runs")
with st.container(key="home_runs"):  # keyed, so tests can find the table
    st.dataframe(tables.runs_table(infos), hide_index=True, placeholder="–", height="content")
