"""hashsvc: perceptual-hash matching of known terrorist propaganda media."""

__version__ = "0.1.0"
