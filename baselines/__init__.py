"""Competing methods, one module each, plus the reference rows (identity, static, oracle)."""
