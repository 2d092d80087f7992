"""Pipeline helpers shared by train.py and evaluate.py (building, checkpoints, run files)."""
