"""`edge-matte run --config FILE` with a hook for tests: python tests/fault_runner.py FILE STALL_S.

The daemon runs exactly as the CLI runs it (main thread, signals, $NOTIFY_SOCKET), with two
additions: its engine can be made to hang (`HangingEngine`, the stand-in for a wedged GPU call),
and stdin takes one command per line, answered on stdout as JSON with every event:
  capture          plate/capture, as MQTT would send it
  patch {json}     apply a config patch through the control API (persisted to FILE)
  hang             the next inference never returns
Stages are expected to beat within STALL_S (the daemon's own limit is 10 s) to keep tests short.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from fault_tools import HangingEngine

from edge_matte.config import schema as config_mod
from edge_matte.errors import EdgeMatteError
from edge_matte.events import Event
from edge_matte.runtime.daemon import STAGES, Daemon

_PRINT_LOCK = threading.Lock()


def say(message: dict) -> None:
    with _PRINT_LOCK:
        print(json.dumps(message), flush=True)


def serve(daemon: Daemon, engine: HangingEngine) -> None:
    """Answer stdin commands until stdin closes."""
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        try:
            if command == "capture":
                daemon.command("plate/capture", {})
            elif command == "patch":
                patch = json.loads(argument)
                daemon.apply_config(config_mod.apply_patch(daemon.config(), patch))
            elif command == "hang":
                engine.hang.set()
            else:
                raise EdgeMatteError(f"unknown command {command!r}")
        except EdgeMatteError as err:
            say({"done": command, "error": str(err)})
        else:
            say({"done": command})


def main() -> int:
    path, stall_s = Path(sys.argv[1]), float(sys.argv[2])
    daemon = Daemon(config_mod.load(path), path)
    for stage in STAGES:
        daemon.heartbeat.register(stage, stall_s)
    engine = HangingEngine(daemon.pipeline.engine.engine)
    daemon.pipeline.engine.engine = engine
    daemon.bus.subscribe(lambda event: say({"event": event.kind, "data": _plain(event)}))
    threading.Thread(target=serve, args=(daemon, engine), name="test-commands", daemon=True).start()
    return daemon.run()


def _plain(event: Event) -> dict:
    return json.loads(json.dumps(event.data, default=str))


if __name__ == "__main__":
    sys.exit(main())
