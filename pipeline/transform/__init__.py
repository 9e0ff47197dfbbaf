"""Transforms of change events: exclude, mask, rename, route, where (per-pipeline rules)."""
