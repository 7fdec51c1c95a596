"""Open a dashboard page as the server does: through the entrypoint ``dashboard/Home.py`` (``st.navigation``),
which draws the sidebar's choice and then runs the page (a file of ``dashboard/views/``)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

__all__ = ["HOME", "VIEWS", "page_app"]

HOME = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
VIEWS = HOME.parent / "views"


def page_app(view: str | None = None, timeout: float = 60, **state) -> AppTest:
    """``AppTest`` of the entrypoint that runs ``view`` (e.g. ``"4_Grad-CAM.py"``; None: Home) on its first run,
    with ``state`` (e.g. ``selected_run="tiny"``) in session state before it."""
    at = AppTest.from_file(str(HOME), default_timeout=timeout)
    for key, value in state.items():
        at.session_state[key] = value
    if view is not None:
        at.switch_page(f"views/{view}")
    return at
