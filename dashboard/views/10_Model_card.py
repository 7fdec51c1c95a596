"""Model card: one model's card (Mitchell et al. 2019), built from its artifacts by ``core.report.card`` exactly as
``python -m trainer card`` writes MODEL_CARD.md and model_card.html beside it; both can be downloaded here.
Text from the run folder is shown inert (``plain``) and tables as data frames, so a card cannot embed anything."""

import pandas as pd
import streamlit as st

from core.report import card
from core.store import CARD_HTML_FILE, CARD_MD_FILE, read_card
from dashboard.common import choice, guard, model_names, plain, stop

ctx = choice()
run = ctx.run
st.title("Model card")
names = model_names(ctx)
if st.session_state.get("card_model") not in names:  # a one-model page starts on the sidebar's first choice
    st.session_state["card_model"] = ctx.first_model() or names[0]
name = st.sidebar.selectbox("Model", names, key="card_model",
                            help="one model at a time; it starts on the first model chosen above")
m = run.model(name)
blocks = None
with guard(f"{name}: model card"):
    blocks = card.card_blocks(run, m)
if not blocks:
    stop()

md = card.to_markdown(blocks)
same = read_card(m.dir) == md
st.caption(f"Built from run `{plain(run.id)}`'s artifacts. "
           + ("The card stored beside the model is the same." if same else
              f"The stored {CARD_MD_FILE} is missing or older than these artifacts: "
              f"`python -m trainer card --run {plain(run.dir)} --model {plain(name)}` rewrites it."))
c1, c2 = st.columns(2)
c1.download_button(f"Download {CARD_MD_FILE}", md.encode("utf-8"), file_name=f"{name}_{CARD_MD_FILE}",
                   mime="text/markdown", key="card_md", on_click="ignore")
c2.download_button(f"Download {CARD_HTML_FILE}", card.to_html(blocks, f"Model card: {name}").encode("utf-8"),
                   file_name=f"{name}_{CARD_HTML_FILE}", mime="text/html", key="card_html", on_click="ignore")

def show(block) -> None:
    """One block of the card: text inert, tables static (they wrap, never scroll)."""
    kind = block[0]
    if kind == "h":
        st.header(block[2].replace("`", ""))
    elif kind == "p":
        st.markdown(plain(block[1].replace("**", "").replace("`", "")))
    elif kind == "ul":
        st.markdown("\n".join(f"- {plain(x.replace('**', '').replace('`', ''))}" for x in block[1]))
    elif kind == "table":
        st.table(pd.DataFrame([[c.replace("`", "") for c in r] for r in block[2]], columns=block[1]))


# the sections as tabs: the card stays about one screen high, whatever its length
sections: list[tuple[str, list]] = [("", [])]
for b in blocks:
    if b[0] == "h" and b[1] == 2:
        sections.append((b[2], []))
    else:
        sections[-1][1].append(b)
for b in sections[0][1]:
    show(b)
for tab, (_title, body) in zip(st.tabs([t for t, _ in sections[1:]]), sections[1:]):
    with tab:
        for b in body:
            show(b)
