"""Faithfulness: can a model's map be trusted? ROAD and the model-randomisation sanity check, per model and CAM
method, from the figures stored by ``python -m trainer faithfulness`` (nothing is computed here)."""


import pandas as pd
import streamlit as st

from core.explain import faithfulness
from core.explain.cams import CAM_METHODS
from core.store import FAITHFULNESS_FILE, read_faithfulness
from dashboard.common import choice, guard, plain, stop

run = choice().run
st.title("Faithfulness: can these maps be trusted?")
st.caption("Two checks per model and CAM method on a fixed sample of test films, computed once by "
           "`python -m trainer faithfulness` and read here. **ROAD** (Rong et al. 2022, pytorch-grad-cam's "
           "ROADCombined): remove the pixels a map calls most relevant, then those it calls least relevant; a "
           "faithful map loses more P(PNEUMONIA) in the first case. Score = (drop removing least − drop removing "
           "most) / 2, in probability units: higher is better, around 0 means the map does not point at what the "
           "output depends on. **Sanity check** (Adebayo et al. 2018): re-initialise the model's top layer and "
           "compute the map again; if it barely changes (Spearman rank correlation above the limit), the map "
           "shows the image's structure, not the model's decision.")
figures = None
with guard(f"{run.id}: {FAITHFULNESS_FILE}"):
    figures = read_faithfulness(run.dir)
if not figures or not figures.get("models"):
    st.info(f"Run `{run.id}` has no faithfulness figures yet. Compute them once (about 2 s of one core per "
            f"film, method and model):\n\n```\npython -m trainer faithfulness --run {run.dir}\n```")
    stop()

rows = []
for model, methods in figures["models"].items():
    for method, f in methods.items():
        if isinstance(f, dict) and "road" in f:
            rows.append({"model": model, "method": method, "ROAD": f["road"], "ROAD sd": f.get("road_sd"),
                         "sanity rho": f["sanity_rho"], "sanity": "pass" if f["sanity_pass"] else "FAILS"})
if not rows:  # models listed, but no method figures under them
    st.info(f"Run `{run.id}`: {FAITHFULNESS_FILE} holds no figures per model and method.")
    stop()
df = pd.DataFrame(rows)
limit = figures.get("sanity_max_rho", faithfulness.SANITY_MAX_RHO)
c = st.columns(4)
c[0].metric("Test films per model", figures.get("n", "?"))
c[1].metric("Models", df["model"].nunique())
c[2].metric("Sanity-check failures", int((df["sanity"] == "FAILS").sum()), help=f"mean rho above {limit}")
c[3].metric("ROAD percentiles", ", ".join(str(p) for p in figures.get("road_percentiles", [])))

# side by side while both fit half the width; one under the other for more methods (no table may scroll inside)
left, right = st.columns(2) if df["method"].nunique() <= 4 else (st.container(), st.container())
with left:
    st.subheader("ROAD (higher is better)")
    order = [m for m in CAM_METHODS if m in set(df["method"])]
    road = df.pivot(index="model", columns="method", values="ROAD")[order]
    st.dataframe(road.style.format("{:+.3f}").background_gradient(cmap="RdYlGn", axis=None, vmin=-0.2, vmax=0.2),
                 width="stretch", height=40 + 35 * len(road))
with right:
    st.subheader(f"Sanity: rank correlation after re-initialising the head (fails above {limit})")
    rho = df.pivot(index="model", columns="method", values="sanity rho")[order]
    st.dataframe(rho.style.format("{:.2f}").background_gradient(cmap="RdYlGn_r", axis=None, vmin=0, vmax=1),
                 width="stretch", height=40 + 35 * len(rho))

st.subheader("Methods ranked by ROAD, only where their 95 % intervals separate")
for model, methods in figures["models"].items():
    st.markdown(f"**{plain(model)}**: {plain(faithfulness.ranking_text(methods))}")  # faithfulness.rank_methods
fails = df[df["sanity"] == "FAILS"]
if not fails.empty:
    by_method = fails.groupby("method")["model"].apply(lambda s: ", ".join(s)).to_dict()
    st.warning("Failing the sanity check (map nearly unchanged when the model's top layer is random): "
               + "; ".join(f"**{m}** on {who}" for m, who in by_method.items())
               + ". The Grad-CAM page marks these combinations.")
st.caption(f"{figures.get('sanity', '')}. ROAD: {figures.get('road', '')}. Films: a fixed random sample of the "
           f"test split (seed {figures.get('seed', '?')}), the same for every method of a model; with this few "
           "films, differences of a few hundredths are noise. A model sure of its answer (P near 1) barely moves when "
           "half the film is imputed, so its ROAD stays near 0 whatever the map: compare methods within a model.")
