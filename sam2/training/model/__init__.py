"""SAM2Train and the training-time model pieces."""
