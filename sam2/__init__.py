"""SAM 2 for Kubeflow: model, training stack, tools and clients for fine-tuning SAM 2 on video data."""
