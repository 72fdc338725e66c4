"""The algorithm room: Fisher, search, allocation, rearrangement, tuning, re-split, latency table and search."""
