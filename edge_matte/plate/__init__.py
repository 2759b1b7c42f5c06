"""The background plate that keeps itself: capture when empty, refresh, stay aligned, persist.

`PlateKeeper` is what the daemon runs per frame; `build_plate` runs the same logic over a
recording for `edge-matte plate build`.
"""

from edge_matte.plate.keeper import PlateKeeper, PlateState
from edge_matte.plate.recording import build_plate

__all__ = ["PlateKeeper", "PlateState", "build_plate"]
