"""The backends the benchmark knows, what each promises, and whether it can run here.

Kept free of torch at import time: `edge-matte --help` and argument errors stay fast.
"""

from __future__ import annotations

import importlib.util

# Largest |alpha - baseline alpha| each backend promises (tests/test_fast_cpu.py: FP32 within
# float rounding; tests/test_torch_engine.py: FP16 on CUDA). Classic is another algorithm: no
# promise, and with random weights no meaningful comparison either.
TOLERANCES: dict[str, float | None] = {
    "torch-cpu+fast": 1e-4,
    "torch-cpu+ort": 1e-4,
    "classic": None,
    "torch-cuda": 0.2,
}
BACKENDS = tuple(TOLERANCES)


def unavailable(name: str) -> str | None:
    """Why backend `name` cannot run here, or None when it can."""
    if name == "torch-cpu+ort" and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (the 'onnx' extra)"
    if name == "torch-cuda":
        import torch  # only now: see the module docstring

        if not torch.cuda.is_available():
            return "no CUDA device"
    return None
