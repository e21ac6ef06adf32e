"""Training of denoisers (and, later, of the invariance models)."""
