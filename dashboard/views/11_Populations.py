"""Populations: each model's figures per data source (children, adults...) and per stratum of a manifest (view,
sex, age band), on every split that has them, with intervals. Pooled over two populations, a big source hides a
small one; here a model that is good on children and at chance on adults looks like that.
"""

import streamlit as st

from core.evaluate.metrics import headline_rule
from core.store import CONFIG_FILE, ArtifactError, metrics_file, population_metrics, population_specs
from dashboard import figures, tables
from dashboard.common import cached_metrics, choice, chosen_with_splits, guard, stop

STRATA = {"source": "data source", "view": "view (AP/PA)", "sex": "sex", "age": "age band"}

st.title("Populations")
chosen, splits = chosen_with_splits(choice())
shown = [s for s in splits if s != "train"]
c1, c2 = st.columns([1, 1])
split_choice = c1.multiselect("Splits", shown, default=[s for s in shown if s != "val"] or shown, key="pop_splits",
                              help="test: held-out patients of each source; other names: sets added with "
                                   "`trainer evaluate` (each is one population)")
column = c2.radio("Per", list(STRATA), format_func=STRATA.get, horizontal=True, key="pop_column")
if "val" in split_choice:
    st.warning(tables.VAL_WARNING)

figures_by_model, rules = {}, {}
for e in chosen:
    with guard(f"{e.label}: {CONFIG_FILE}"):
        rules[e.label] = headline_rule(e.model.config)
    found = {}
    for split in split_choice:
        if split not in e.model.splits():
            continue
        with guard(f"{e.label}: {metrics_file(split)}"):
            whole = cached_metrics(e.model, split)
            specs = population_specs(whole, split, column)
            if not specs and column == "source":
                found[split] = whole  # an evaluated set, or a one-source run: the split is the population
            for spec in specs:
                try:
                    found[spec] = population_metrics(whole, spec, e.model.dir)
                except ArtifactError as err:
                    st.error(f"{e.label}: {err}")
    if found:
        figures_by_model[e.label] = found

if not figures_by_model:
    stop(f"None of the chosen models has figures per {STRATA[column]} on the chosen splits. Per-source figures come "
         "from a run over several sources (`sources:` in its config, e.g. configs/populations.yaml); per-view, sex "
         "and age figures from a manifest that has those columns (training or `trainer evaluate`).")
table = tables.population_table(figures_by_model, rules)
st.plotly_chart(figures.population_forest(table, colors={e.label: e.color for e in chosen}), key="pop_forest")
st.caption("Each dot is a model's AUC on one population, its bar the 95% stratified bootstrap interval; the dotted "
           "line is chance. Intervals that do not overlap are differences larger than chance; small populations "
           "have wide bars.")
st.container(key="pop_table").dataframe(
    table.drop(columns=["lo", "hi"]), hide_index=True, placeholder="–", height="content",
    column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("AUC", "sensitivity", "specificity")})
st.caption("Sensitivity and specificity at each model's own threshold, chosen on validation (one threshold for "
           "every film; in a multi-source run it keeps each source's validation sensitivity at its rule), with "
           "95% Wilson intervals. A population with no films of one class has no AUC.")
