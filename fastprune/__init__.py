"""fastprune: fast post-training structured pruning of Transformers."""

__version__ = "0.1.0"
