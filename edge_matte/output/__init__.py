"""Where the composite goes: compositing, RTSP, the device's screen and the browser view."""
