"""edge-matte: an always-on BackgroundMattingV2 appliance for Jetson Orin boards."""

__version__ = "0.1.0"
