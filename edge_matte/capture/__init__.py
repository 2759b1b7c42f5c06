"""Frame sources addressed by URI, as jetson-utils does: csi://, v4l2://, file://, rtsp://, test://.

Every source keeps timeout, end-of-stream and failure distinct (SourceTimeout, SourceEnded,
SourceError) so the daemon can tell a slow camera from a lost one.
"""

from __future__ import annotations

from typing import Protocol

from edge_matte.frames import Frame, SourceInfo


class FrameSource(Protocol):
    """A camera, file, stream or synthetic scene delivering BGR uint8 frames."""

    @property
    def info(self) -> SourceInfo:
        """What the source really delivers."""
        ...

    def read(self, timeout: float) -> Frame:
        """Next frame; raise SourceTimeout, SourceEnded or SourceError."""
        ...

    def close(self) -> None:
        """Release the device or stream; safe to call twice."""
        ...
