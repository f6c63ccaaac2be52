"""Training: the trainer, its settings and the offline data sets."""
