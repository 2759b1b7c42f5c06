#!/usr/bin/env bash
# Set up a development/CI machine (Debian 12 / Ubuntu 22.04, x86-64 or arm64): system packages
# (GStreamer + RTSP server, Mosquitto, FFmpeg, systemd tools) and a virtualenv in .venv with
# edge-matte installed editable. Idempotent: a second run only checks.
# On a Jetson, use the JetPack notes in README.md instead (NVIDIA's torch wheel, torch2trt, jetson-utils).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv python3-dev pkg-config gcc
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-rtsp
  gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0
  libgirepository1.0-dev libcairo2-dev
  mosquitto mosquitto-clients ffmpeg openssl systemd v4l-utils strace
  opencv-doc xvfb x11-utils chromium gstreamer1.0-x
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU wheel this project is developed against; a looser
# request would pull a multi-GB CUDA build. Skipped when some torch is already installed.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[rtsp,test]"
echo "edge-matte is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
