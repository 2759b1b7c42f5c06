"""jetson-utils capture, with stand-ins for the module (it exists only on a Jetson).

tests/fixtures holds two `jetson_utils` modules: one whose import fails as jetson-utils built
against NumPy 1.x fails under NumPy 2 (SystemError), and one whose camera opened and stalls,
logging as jetson-utils does per capture timeout unless opened with a quieter `--log-level`
(after delivering frames stamped as jetson-utils stamps them, when asked to).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from edge_matte.capture import jetson_source
from edge_matte.capture.jetson_source import STALL_LOG_S, JetsonGrabber
from edge_matte.capture.opener import open_source
from edge_matte.config.schema import SourceConfig
from edge_matte.errors import SourceError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def forget_jetson_utils():
    """No stand-in stays imported for the tests after these."""
    saved = sys.modules.pop("jetson_utils", None)
    yield
    sys.modules.pop("jetson_utils", None)
    if saved is not None:
        sys.modules["jetson_utils"] = saved


def use_jetson_utils(monkeypatch, variant: str):
    """Make `import jetson_utils` find the stand-in in fixtures/jetson_utils_<variant>."""
    monkeypatch.syspath_prepend(str(FIXTURES / f"jetson_utils_{variant}"))


def test_a_jetson_utils_broken_by_numpy_2_is_unavailable_and_v4l2_falls_back_to_opencv(
    monkeypatch, caplog
) -> None:
    use_jetson_utils(monkeypatch, "numpy2")
    with pytest.raises(SourceError, match="/dev/video97 does not exist"):  # OpenCV's V4L2 path
        open_source(SourceConfig(uri="v4l2:///dev/video97"))
    assert "jetson-utils unusable" in caplog.text and "SystemError" in caplog.text
    with pytest.raises(SourceError, match=r"csi://0 needs jetson-utils.*SystemError"):
        open_source(SourceConfig(uri="csi://0"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stalled_camera_is_reported_once_per_interval_not_per_timeout(
    monkeypatch, caplog
) -> None:
    use_jetson_utils(monkeypatch, "stalled")
    import jetson_utils

    monkeypatch.setattr(jetson_utils, "PACE", 0.0)
    clock = Clock()
    grabber = JetsonGrabber("csi://0", "csi://0", 1280, 720, 30.0, clock=clock)
    timeouts = int(3 * STALL_LOG_S / 0.25)  # 30 s of 250 ms capture timeouts
    with caplog.at_level(logging.INFO):
        for _ in range(timeouts):
            clock.now += 0.25
            assert grabber.grab() is None
    grabber.close()
    assert [r.name for r in caplog.records if r.name == "jetson_utils"] == []
    ours = [r.getMessage() for r in caplog.records if r.name == jetson_source.__name__]
    assert ours == [f"no frame from csi://0 for {s:.0f} s" for s in (10, 20, 30)]


def test_frames_carry_the_camera_timestamp_or_our_clock_without_one(monkeypatch) -> None:
    """cudaImage.timestamp (ns, the buffer's PTS) is the media time; 0 (jetson-utils could not
    read its timestamp ring) falls back to the monotonic clock at capture."""
    use_jetson_utils(monkeypatch, "stalled")
    import jetson_utils

    monkeypatch.setattr(jetson_utils, "STAMPS", [5_000_000_000, 5_033_333_333, 0])
    clock = Clock()
    grabber = JetsonGrabber("csi://0", "csi://0", 1280, 720, 30.0, clock=clock)
    stamps = []
    for _ in range(3):
        assert grabber.grab().shape == (720, 1280, 3)
        stamps.append(grabber.media_s)
    grabber.close()
    assert stamps == pytest.approx([5.0, 5.033333333, clock.now])


@pytest.mark.parametrize("flip", [None, "rotate-180", "none"])
def test_the_flip_option_reaches_jetson_utils(monkeypatch, flip) -> None:
    use_jetson_utils(monkeypatch, "stalled")
    import jetson_utils

    source = open_source(SourceConfig(uri="csi://0", flip=flip))
    source.close()
    uri, argv = jetson_utils.OPENED[-1]
    assert uri == "csi://0"
    assert "--log-level=error" in argv and "--input-width=1280" in argv
    assert [a for a in argv if a.startswith("--input-flip")] == (
        [] if flip is None else [f"--input-flip={flip}"]
    )


def test_an_unknown_flip_is_refused() -> None:
    with pytest.raises(ValueError, match="flip"):
        SourceConfig(uri="csi://0", flip="upside-down")
