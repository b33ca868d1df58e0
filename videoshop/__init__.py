"""Videoshop (Fan, Bhattad, Krishna, ECCV 2024): localized video editing by noise-extrapolated SVD inversion."""
