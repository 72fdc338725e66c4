"""Kubeflow Pipelines components: one module per pipeline step, each a thin typed wrapper that calls one stage
of :mod:`fastprune.common.stages` through :func:`fastprune.components.runtime.run_component`."""

BASE_IMAGE = "ghcr.io/fastprune/fastprune:0.1.0"
"""The project image every step runs in (see the Dockerfile); ``fastprune compile --image`` sets another."""
