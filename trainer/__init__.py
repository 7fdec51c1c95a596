"""Command-line trainer: ``python -m trainer {models,train,evaluate}`` (see docs/trainer.md)."""
