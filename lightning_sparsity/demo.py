"""Placeholder main job: a short pruning run on a tiny model (replaced by the real demo)."""
