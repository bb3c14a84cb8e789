"""Start training: a Kubeflow PyTorchJob on a cluster, or the same entry point under local torchrun."""
