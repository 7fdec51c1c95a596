"""Where a heatmap's evidence lies: inside the lung fields, or on the borders, markers and outside the body.

For one map (any size; it is resized to the film's masks) and the film's lung mask (core/models/lungs.py):

- **lung focus** = share of the map's mass (its non-negative values summed) inside the lung fields;
- **border mass** = share in the border band (``BORDER_BAND`` of the side along every edge, where the burned-in
  "R" / "A-P" markers, labels and film edges sit) or outside the body, counted once;
- a plain-words **flag** when most of the evidence lies outside the lungs (lung focus < ``FLAG_BELOW``).

The body mask is deliberately simple: the blurred film thresholded at Otsu's level (tissue is brighter than the
air around the patient), its largest connected component with holes filled (the dark lungs lie inside it), joined
with the lung mask. It only needs to tell "patient" from "air and film edge"; it is not a segmentation.
A map with no mass at all (no evidence for the class) has no focus: NaN, and its own message.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from core.models.lungs import lung_mask, postprocess

BORDER_BAND = 0.08  # fraction of the film's height/width along each edge
FLAG_BELOW = 0.5  # lung focus under this: most evidence lies outside the lungs


@dataclass(frozen=True)
class Focus:
    lung_focus: float  # in [0, 1]; NaN for an empty map
    border_mass: float  # in [0, 1]; NaN for an empty map

    @property
    def flagged(self) -> bool:
        return bool(self.lung_focus < FLAG_BELOW)  # False for NaN

    @property
    def empty(self) -> bool:
        return bool(np.isnan(self.lung_focus))

    def flag_text(self) -> str:
        """One plain sentence for a caption: what a reader should take from where the map lies."""
        if self.empty:
            return "The map is empty: the model shows no evidence for this class on this film."
        if self.flagged:
            where = (f" ({self.border_mass:.0%} on the image border or outside the body, where markers and labels "
                     "sit)") if self.border_mass >= 0.2 else ""
            return (f"Warning: most of the evidence ({1 - self.lung_focus:.0%}) lies outside the lung fields{where}. "
                    "This map does not point at a finding in the lungs.")
        return f"Most of the evidence ({self.lung_focus:.0%}) lies inside the lung fields."

    def caption(self) -> str:
        if self.empty:
            return self.flag_text()
        return (f"Lung focus {self.lung_focus:.0%} · border/outside-body mass {self.border_mass:.0%}. "
                + self.flag_text())


def border_band(shape: tuple[int, int], band: float = BORDER_BAND) -> np.ndarray:
    """True within ``band`` x the side of any edge."""
    h, w = shape
    dy, dx = max(1, round(band * h)), max(1, round(band * w))
    out = np.zeros((h, w), dtype=bool)
    out[:dy], out[-dy:], out[:, :dx], out[:, -dx:] = True, True, True, True
    return out


def body_mask(gray_uint8: np.ndarray, lungs: np.ndarray | None = None) -> np.ndarray:
    """The patient's body, roughly (see the module docstring): Otsu on the blurred film, largest component,
    holes filled, joined with the lung mask when given."""
    gray = np.asarray(gray_uint8)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"body_mask expects a 2-D uint8 array, got {gray.dtype} {gray.shape}")
    k = max(3, (min(gray.shape) // 50) | 1)
    blurred = cv2.GaussianBlur(gray, (k, k), 0)
    _, fg = cv2.threshold(blurred, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if lungs is not None:
        fg = fg.astype(bool) | np.asarray(lungs, dtype=bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.asarray(fg, np.uint8), connectivity=8)
    if n <= 1:
        return np.ones(gray.shape, dtype=bool)  # nothing to go on: treat the whole film as body
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return postprocess(labels == largest)


def map_focus(heatmap: np.ndarray, lungs: np.ndarray, body: np.ndarray | None = None,
              band: float = BORDER_BAND) -> Focus:
    """Lung focus and border mass of one map against the film's lung (and body) masks."""
    lungs = np.asarray(lungs, dtype=bool)
    if lungs.ndim != 2:
        raise ValueError(f"the lung mask must be 2-D, got shape {lungs.shape}")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"the map must be 2-D, got shape {heat.shape}")
    h, w = lungs.shape
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0, None)
    total = float(heat.sum(dtype=np.float64))
    if total <= 1e-12:
        return Focus(float("nan"), float("nan"))
    off = border_band((h, w), band)
    if body is not None:
        off |= ~np.asarray(body, dtype=bool)
    return Focus(float(heat[lungs].sum(dtype=np.float64) / total), float(heat[off].sum(dtype=np.float64) / total))


def film_focus(gray_uint8: np.ndarray, heatmap: np.ndarray) -> Focus:
    """Lung focus of a map on a film: lung mask (committed model, cached per film) and body mask from the film."""
    lungs = lung_mask(gray_uint8)
    return map_focus(heatmap, lungs, body_mask(gray_uint8, lungs))


def overlay_caption(gray_uint8: np.ndarray, heatmap: np.ndarray) -> str:
    """The caption for a heatmap overlay: lung focus %, border mass %, and the plain-words flag."""
    return film_focus(gray_uint8, heatmap).caption()


# --- the figures of ``python -m trainer focus`` (read by ``core.store.read_focus``) ------------------------------

def ranking(df: pd.DataFrame, method: str) -> pd.DataFrame:
    """Per model, for one CAM method: median lung focus (best first), quartiles, border mass, share flagged, n."""
    t = df[df["method"] == method]
    rows = []
    for model, g in t.groupby("model"):
        lf = g["lung_focus"].dropna()
        rows.append({"model": model, "median lung focus": lf.median(), "q25": lf.quantile(0.25),
                     "q75": lf.quantile(0.75), "median border mass": g["border_mass"].dropna().median(),
                     "flagged": (lf < FLAG_BELOW).mean(), "n": len(g)})
    cols = ["model", "median lung focus", "q25", "q75", "median border mass", "flagged", "n"]
    return pd.DataFrame(rows, columns=cols).sort_values("median lung focus", ascending=False, ignore_index=True)
