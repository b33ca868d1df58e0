"""Datasets: the one on-disk layout, video I/O, loaders and builders, and the embedded sample track."""
