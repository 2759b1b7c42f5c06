"""Remote control of the daemon: the ControlApi it implements and the MQTT transport.

Topics (device base `<topic_prefix>/<device_id>/`, fleet base `<topic_prefix>/group/<group>/`):

| topic                         | direction | retained | payload                                                      |
|-------------------------------|-----------|----------|--------------------------------------------------------------|
| availability                  | out       | yes      | `online`; `stopping` then `offline` on stop; will `offline`  |
| state                         | out       | yes      | ControlApi.state(); before `online`, then on each change      |
| config                        | out       | yes      | effective config, secrets masked; on each change and reload  |
| telemetry                     | out       | no       | JSON from ControlApi.telemetry() every telemetry_interval_s  |
| events                        | out       | no       | Event.to_json(); up to 100 kept while the broker is away     |
| config/set (device and group) | in        | -        | JSON merge patch, optional "id"                              |
| config/result                 | out       | no       | {"id", "ok", "errors": ["key: problem", ...]}                |
| cmd/<name> (device and group) | in        | -        | JSON object of arguments (`{}` for none), optional "id"      |
| cmd/result                    | out       | no       | {"id", "command", "ok", "result" or "error"}                 |
| snapshot                      | out       | no       | JPEG of the composite, after cmd/snapshot                    |
| image                         | out       | yes      | JPEG of the composite every mqtt.image_interval_s (0: off)   |
| plate/auto_refresh/set        | in        | -        | ON / OFF (Home Assistant switch; only with homeassistant on) |

Commands: plate/capture, plate/freeze, plate/unfreeze, plate/clear, restart, snapshot,
background/set {"name": "file.png"} or {"image_base64": "..."}. Retained requests are refused
(MQTT 5 subscriptions keep the flag of live retained messages); empty payloads are ignored.
"""

from edge_matte.control.api import DAEMON_COMMANDS, ControlApi

__all__ = ["DAEMON_COMMANDS", "ControlApi"]
