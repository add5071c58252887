"""Plain types every layer may import: signals, errors, thresholds, names."""
