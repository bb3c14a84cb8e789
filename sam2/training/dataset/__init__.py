"""Training data: raw data sets, samplers, joint image/mask transforms, the mixed loader."""
