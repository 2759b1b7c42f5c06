"""The typed configuration, what is masked when it leaves the process, and the calibration profile."""
