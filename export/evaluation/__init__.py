"""Evaluation: bench, report, check, sample quality and plots."""
