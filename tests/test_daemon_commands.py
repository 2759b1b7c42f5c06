"""The daemon executes every command of the one command table (edge_matte.control.topics)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from fault_tools import running, small_config

from edge_matte.control.topics import BACKGROUND_SET, DAEMON_COMMANDS
from edge_matte.runtime.daemon import Daemon


def test_every_daemon_command_of_the_table_runs(tmp_path: Path) -> None:
    daemon = Daemon(small_config(tmp_path))
    media = daemon.config().resolved_media_dir()
    media.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(media / "beach.png"), np.full((24, 32, 3), 90, np.uint8))
    with running(daemon):
        for name in DAEMON_COMMANDS:  # a name the table adds but the daemon lacks fails here
            args = {"name": "beach.png"} if name == BACKGROUND_SET else {}
            assert isinstance(daemon.command(name, args), dict), name
        assert daemon.config().compose.background == "beach.png"
        assert daemon.pipeline.failed is None
