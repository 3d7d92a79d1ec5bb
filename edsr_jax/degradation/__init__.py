"""degradation."""
