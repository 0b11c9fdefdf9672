"""Evaluation: the field's metrics, folder scoring, the paper's comparison tables."""
