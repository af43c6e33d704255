"""Honest forecast evaluation: metrics (evaluation.metrics), walk-forward (evaluation.walkforward), reports (evaluation.report)."""
