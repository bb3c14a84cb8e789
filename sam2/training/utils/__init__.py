"""Training utilities: typed batches, distributed helpers, checkpoints."""
