"""Results -> the paper's tables, plots and an HTML gallery; the paper's reference numbers as data."""
