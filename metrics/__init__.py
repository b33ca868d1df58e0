"""Metrics, one module per family; each checked against a reference in tests/."""
