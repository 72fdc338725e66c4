"""The stage flow: parameters, the stage runners and :func:`run_stage`, the one-shot prune and the sweep."""
