"""Kubeflow Pipelines components: thin typed wrappers over fastprune.common."""
