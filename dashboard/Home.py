"""Home: the runs in the artifacts folder and a leaderboard of the selected run's models.

    streamlit run dashboard/Home.py [-- --artifacts DIR]
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])  # the repo root, so that `dashboard` and `core` import
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from core.artifacts import ArtifactError, ModelArtifacts, list_runs  # noqa: E402
from dashboard import tables  # noqa: E402
from dashboard.common import (CITATION, NOTICE, artifacts_root, cached_history, cached_metrics, guard,  # noqa: E402
                              page, select_run)

page("Home")
st.title("Chest X-ray classifiers: PNEUMONIA vs NORMAL")
st.warning(NOTICE)

run = select_run()
if run is not None:
    st.subheader("Runs")
    infos = []
    for r in list_runs(artifacts_root()):
        try:
            infos.append((r.id, r.info))
        except ArtifactError as e:
            infos.append((r.id, None))
            st.error(f"run {r.id}: {e}")
    with st.container(key="home_runs"):  # keyed, so tests can find the table
        st.dataframe(tables.runs_table(infos), hide_index=True, placeholder="–")

    st.subheader(f"Leaderboard · run `{run.id}`")
    with guard(f"run {run.id}"):
        info = run.info
        n_skipped = int(info.get("n_skipped", 0) or 0)
        st.caption(f"Data `{info.get('data_root', '?')}` ({info.get('data_layout', '?')} layout), "
                   f"created {str(info.get('created', '?'))[:19].replace('T', ' ')} · "
                   f"**{n_skipped} file(s) skipped** as unreadable")
        if n_skipped:
            with st.expander(f"{n_skipped} skipped file(s)"), guard("skipped.csv"):
                st.dataframe(run.skipped(), hide_index=True, placeholder="–")

    entries = []
    for m in run.models:
        e = {"model": m.name, "config": None, "status": None, "history": None, "metrics": None}
        with guard(f"{m.name}: config.json"):
            e["config"] = m.config
        with guard(f"{m.name}: status.json"):
            e["status"] = m.status()
        if (m.dir / "history.csv").exists():
            with guard(f"{m.name}: history.csv"):
                e["history"] = tables.checked_history(cached_history(m), str(m.dir / "history.csv"))
        if (m.dir / "metrics_test.json").exists() or (e["status"] or {}).get("state") == "finished":
            with guard(f"{m.name}: test metrics"):
                e["metrics"] = cached_metrics(m, "test")
        entries.append(e)
    # A model that failed before writing its config.json still has a status worth showing.
    listed = {m.name for m in run.models}
    for p in sorted(run.dir.glob("*/status.json")):
        if p.parent.name not in listed:
            with guard(f"{p.parent.name}: status.json"):
                entries.append({"model": p.parent.name, "status": ModelArtifacts(run.dir, p.parent.name).status()})

    if entries:
        board = tables.leaderboard(entries)
        st.container(key="home_leaderboard").dataframe(
            board, hide_index=True, placeholder="–",
            column_config={
                "test AUC": st.column_config.NumberColumn(format="%.4f"),
                "accuracy": st.column_config.NumberColumn(format="%.3f"),
                "sensitivity": st.column_config.NumberColumn(format="%.3f"),
                "specificity": st.column_config.NumberColumn(format="%.3f"),
                "F1": st.column_config.NumberColumn(format="%.3f"),
                "threshold": st.column_config.NumberColumn(format="%.4f", help="chosen on validation (Youden J)"),
                "params": st.column_config.NumberColumn(format="localized"),
                "train time (s)": st.column_config.NumberColumn(format="%.0f"),
            })
        st.caption("Test split. Accuracy, sensitivity, specificity and F1 at the threshold chosen on validation "
                   "(max Youden J); AUC interval: stratified bootstrap. \"from scratch\" = no ImageNet weights.")
        for e in entries:
            s = e.get("status") or {}
            if s.get("state") == "failed":
                st.error(f"{e['model']} failed: {s.get('message') or 'no message'}")
            elif tables.status_label(s) == "stale":
                st.warning(f"{e['model']}: status says running but no heartbeat for over 10 minutes; the trainer "
                           "probably died. Continue it with `python -m trainer train ... --resume`.")
    else:
        st.info(f"Run `{run.id}` has no models yet.")

st.divider()
st.caption(CITATION)
