"""Jetson grabber: jetson-utils `videoSource` for csi:// (and v4l2:// on a Jetson).

jetson-utils exists only on Jetsons, so it is imported when a source is opened, never at import
time. Copies: `Capture` returns a cudaImage from a ring buffer the camera will overwrite;
`cudaToNumpy` maps that same memory without copying (unified memory on Jetson), and the
RGB->BGR conversion writes the one copy we keep. Nothing else is copied.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from ..errors import SourceError
from ..frames import SourceInfo

_LOG = logging.getLogger(__name__)

_CAPTURE_TIMEOUT_MS = 250  # short, so the reader thread notices a close request quickly


def _import_jetson_utils(label: str) -> Any:
    try:
        import jetson_utils
    except ImportError as err:
        raise SourceError(
            f"{label} needs jetson-utils, which exists only on a Jetson "
            "(build dusty-nv/jetson-utils with its Python bindings)"
        ) from err
    return jetson_utils


class JetsonGrabber:
    """One jetson-utils videoSource; `grab` returns a BGR copy or None when no frame came."""

    pace_s: float | None = None  # the camera paces itself

    def __init__(self, uri: str, label: str, width: int, height: int, fps: float) -> None:
        self._utils = _import_jetson_utils(label)
        self._label = label
        argv = [f"--input-width={width}", f"--input-height={height}", f"--input-rate={fps:g}"]
        try:
            self._source = self._utils.videoSource(uri, argv=argv)
        except Exception as err:  # jetson-utils raises bare Exception for every failure
            raise SourceError(f"cannot open {label}: {err}") from err
        self.info = SourceInfo(
            uri=label,
            width=self._source.GetWidth(),
            height=self._source.GetHeight(),
            fps=float(self._source.GetFrameRate()) or fps,
        )

    def grab(self) -> np.ndarray | None:
        try:
            image = self._source.Capture(format="rgb8", timeout=_CAPTURE_TIMEOUT_MS)
        except Exception as err:  # a capture error, not a timeout (that returns None)
            raise SourceError(f"{self._label} capture failed: {err}") from err
        if image is None:
            if not self._source.IsStreaming():
                raise SourceError(f"{self._label} stopped streaming")
            return None
        self._utils.cudaDeviceSynchronize()
        rgb = self._utils.cudaToNumpy(image)  # a view of the ring buffer, no copy
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # the copy we keep

    def close(self) -> None:
        self._source.Close()
