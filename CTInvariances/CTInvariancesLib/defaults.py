"""Defaults shared by the library, the command line and the Slicer module (imports nothing heavy)."""

# The consistency step (invariance/consistency.py): measured choice, see README ("The consistency step").
CONSISTENCY_METHOD = "ncg"
# at most; stops earlier once every sample is consistent. 80, not 40: the spatial engine's samples of
# wganvgg on the demo's crop needed more (fidelity ratio 0.13 after 40 steps, 0.070 within 80)
CONSISTENCY_STEPS = 80
