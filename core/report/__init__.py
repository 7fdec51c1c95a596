"""Reports read from a run folder: one results row per model (README table, dashboard leaderboard), the model
card."""
