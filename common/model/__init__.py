"""The model room: the family seam (adapters), masks and hooks, the cost model, export, loading, timing."""
