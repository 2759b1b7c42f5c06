"""One-shot jobs of the command line: offline matting, plate build, calibrate, export, install, soak."""
