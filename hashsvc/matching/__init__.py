"""Matching: candidates to evidence per known entry to a decision."""
