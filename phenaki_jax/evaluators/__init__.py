"""Evaluators: one module per metric (shapes.py: the analytic Shapes prompt-following scorer)."""
