"""Drawing a Prediction: viz/maps.py (head selection, rollout), viz/plots.py and viz/pictures.py (PNG), viz/explorer (HTML)."""
