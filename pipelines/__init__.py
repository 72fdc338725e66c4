"""Kubeflow pipelines built from the components."""
