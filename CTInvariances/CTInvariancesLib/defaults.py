"""Defaults shared by the library, the command line and the Slicer module (imports nothing heavy)."""

# The consistency step (invariance/consistency.py): measured choice, see README ("The consistency step").
CONSISTENCY_METHOD = "gd"
CONSISTENCY_STEPS = 40  # at most; stops earlier once every sample is consistent
