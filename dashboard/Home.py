"""The dashboard's entrypoint: ``python -m streamlit run dashboard/Home.py [-- --artifacts DIR]``.

Streamlit runs this file before every page (``st.navigation``). It owns what every page shares: the page config,
the research-use notice, the sidebar's choice of run, compared run, models and site profile (``common.choose``,
drawn once here and handed to the page as one ``common.Choice``) and the footer. The pages, in ``views/``, only
draw. Once the server's first page is drawn, ``dashboard.warm`` starts a background thread that loads what the
pages will need (imports, models and their ONNX sessions, the lung model, the default run's tables, the example
films' maps).
"""

from pathlib import Path

import streamlit as st

from dashboard import common, warm

VIEWS = Path(__file__).resolve().parent / "views"
# (file in views/, does the page use the sidebar's model choice?); URLs come from the file names (/Grad-CAM ...)
PAGES = [("home.py", True), ("1_Training_curves.py", True), ("2_ROC_PR_confusion.py", True),
         ("3_Model_comparison.py", True), ("4_Grad-CAM.py", True), ("5_Errors.py", True), ("6_Calibration.py", True),
         ("7_Where_models_look.py", False), ("8_Consensus.py", True), ("9_Faithfulness.py", False),
         ("10_Model_card.py", True), ("11_Populations.py", True)]

pages = {name: st.Page(VIEWS / name, title="Home", default=True) if name == "home.py" else st.Page(VIEWS / name)
         for name, _ in PAGES}
page = st.navigation(list(pages.values()))
st.set_page_config(page_title=f"{page.title} · CXR model comparison", page_icon="🫁", layout="wide")
st.sidebar.warning(common.NOTICE)
uses_models = next(uses for name, uses in PAGES if pages[name] is page)
if common.choose(uses_models) is None:
    common.stop()  # no run yet: choose() said how to train one
try:
    page.run()
    common.footer()
finally:  # after the first page is drawn, so that warming does not slow it down; once per process
    warm.start(common.artifacts_root())
