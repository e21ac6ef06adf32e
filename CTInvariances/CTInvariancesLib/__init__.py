"""CTInvariances core library: never imports slicer or qt.

Layers (data flows one way): io -> normalization/lowdose -> denoisers -> (invariance engine) ->
(analysis) -> applications (cli, Slicer logic).
"""

__version__ = "0.1.0"
