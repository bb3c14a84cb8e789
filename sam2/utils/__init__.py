"""Helpers shared by the predictors and training: frame loading, transforms, mask utilities."""
