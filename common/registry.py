"""The import path of registered models' entry point (``fastprune.common.registry.PrunedTextModel``), kept so that
model versions registered before the code moved to :mod:`fastprune.common.ops.registry` still load."""

from .ops.registry import PrunedTextModel

__all__ = ["PrunedTextModel"]
