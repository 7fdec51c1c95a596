"""One colour per model, the same on every page (no plotly here: the entrypoint needs the colours on every rerun,
and the figures module, which imports plotly, only on pages that draw)."""

from __future__ import annotations

__all__ = ["ENSEMBLE_COLOR", "PALETTE", "model_colors"]

# Colour-blind-safe hues: Okabe & Ito (2008) without its yellow, then the darker hues of Paul Tol's muted scheme.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#332288", "#999933", "#882255",
           "#44AA99", "#CC6677", "#117733", "#AA4499", "#DDCC77", "#88CCEE"]
ENSEMBLE_COLOR = "#000000"  # ensembles are drawn black on every page


def model_colors(names, ensembles=()) -> dict[str, str]:
    """One colour per name in the given order (the run's model order, so every page agrees); ensembles black."""
    colors, i = {}, 0
    for n in names:
        if n in set(ensembles):
            colors[n] = ENSEMBLE_COLOR
        else:
            colors[n] = PALETTE[i % len(PALETTE)]
            i += 1
    return colors
