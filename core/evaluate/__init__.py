"""Figures from predictions: metrics and intervals, calibration, population check, a site's operating point (pure
functions of arrays)."""
