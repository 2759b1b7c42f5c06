"""The browser view's page: the live image and the device's state, refreshing by itself.

The state is written into the page when it is served (players without JavaScript still show
it) and refreshed from /state.json every two seconds. The image starts as a snapshot, so the
page's load completes, and then switches to the MJPEG stream.
"""

from __future__ import annotations

import html
from typing import Any

_ROWS = (
    ("Engine", "engine"),
    ("Pipeline", "pipeline"),
    ("Plate", "plate"),
    ("Plate known", "plate_known_fraction"),
    ("Output fps", "fps"),
    ("RTSP clients", "rtsp_clients"),
    ("Browser viewers", "viewers"),
    ("Source", "source"),
)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge-matte</title>
<style>
body {{ margin: 0; background: #111; color: #ddd; font: 14px sans-serif; height: 100vh;
  display: grid; grid-template-columns: minmax(0, 1fr) 280px; }}
#live {{ width: 100%; height: 100vh; object-fit: contain; background: #000; }}
aside {{ padding: 12px; overflow: auto; }}
td {{ padding: 2px 8px 2px 0; vertical-align: top; overflow-wrap: anywhere; }}
td:first-child {{ white-space: nowrap; color: #999; }}
h3 {{ margin: 12px 0 4px; font-size: 14px; }}
ul {{ padding-left: 16px; }}
</style></head>
<body>
<img id="live" src="/snapshot.jpg" alt="live view">
<aside><table id="state">{rows}</table>
<h3>Last events</h3><ul id="events">{events}</ul></aside>
<script>
window.addEventListener("load", () => {{
  document.getElementById("live").src = "/stream.mjpg";
}});
const rows = {keys};
function text(v) {{ return v === null || v === undefined ? "-" : String(v); }}
async function refresh() {{
  try {{
    const s = flatten(await (await fetch("/state.json", {{cache: "no-store"}})).json());
    for (const [key, id] of rows) document.getElementById(id).textContent = text(s[key]);
    const list = document.getElementById("events");
    list.replaceChildren(...(s.events || []).map(e => {{
      const li = document.createElement("li"); li.textContent = e.kind + ": " + e.message; return li;
    }}));
  }} catch (err) {{ /* the next refresh tries again */ }}
}}
function flatten(s) {{ return Object.assign({{}}, s, {{viewers: s.http ? s.http.viewers : null}}); }}
setInterval(refresh, 2000);
</script>
</body></html>
"""


def page_values(state: dict[str, Any]) -> dict[str, Any]:
    """The values the page shows, by key (the http section's viewers lifted up)."""
    return {**state, "viewers": state.get("http", {}).get("viewers")}


def render_page(state: dict[str, Any]) -> str:
    """The page with `state` filled in."""
    values = page_values(state)
    rows = "".join(
        f'<tr><td>{label}</td><td id="v-{key}">{html.escape(_text(values.get(key)))}</td></tr>'
        for label, key in _ROWS
    )
    events = "".join(
        f"<li>{html.escape(str(e.get('kind')))}: {html.escape(str(e.get('message')))}</li>"
        for e in state.get("events", [])
    )
    keys = "[" + ", ".join(f'["{key}", "v-{key}"]' for _, key in _ROWS) + "]"
    return _PAGE.format(rows=rows, events=events, keys=keys)


def _text(value: Any) -> str:
    return "-" if value is None else str(value)
