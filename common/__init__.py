"""The pruning library: algorithms and I/O, no Kubeflow imports."""
