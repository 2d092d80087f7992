"""Training: the LightningModules (classification, translation), LR schedules and speed / memory switches."""
