"""Evaluation: tasks, metrics (overall, per fold, by region with blocked-bootstrap CIs)."""
