"""Attention maps and pictures: see viz/maps.py (what), viz/plots.py (drawing), viz/explain.py (per model)."""
