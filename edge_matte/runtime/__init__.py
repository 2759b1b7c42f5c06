"""The running appliance: daemon, pipeline threads, start checks, health, systemd and telemetry."""
