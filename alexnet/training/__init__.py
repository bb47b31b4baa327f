"""Training: from a resolved config to a run directory of checkpoints (docs/architecture.md)."""
