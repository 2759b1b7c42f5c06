"""torch2trt converters this model needs and torch2trt lacks, registered before any conversion.

`nn.ReLU6` (34 of them in MobileNetV2) calls `F.hardtanh(x, 0, 6, inplace)`; torch2trt converts
`F.relu6` only, so without this `hardtanh` meets its "known unsupported method" placeholder and,
the ReLU6 being in place, the previous layer's output passes through unclipped: a wrong engine.
TensorRT's CLIP activation computes hardtanh exactly (alpha = min_val, beta = max_val).

`torch_left_as_found`: while converting, torch2trt replaces torch's methods with recording
wrappers, and on the way out it puts the originals back as attributes of `torch.Tensor` itself
(588 of them that `Tensor` only inherited, `__getattribute__` among them: every attribute
lookup on a tensor then goes through a Python-level hook). Nothing here was seen to break
because of it, but the daemon keeps running torch after a build (and falls back to other torch
engines after a failed one), so the class is restored exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def register() -> None:
    """Register the converters with torch2trt (idempotent: a later call replaces the same entries)."""
    import tensorrt as trt
    from torch2trt.torch2trt import add_missing_trt_tensors, get_arg, tensorrt_converter

    @tensorrt_converter("torch.nn.functional.hardtanh")
    @tensorrt_converter("torch.nn.functional.hardtanh_")
    def convert_hardtanh(ctx: Any) -> None:
        source = get_arg(ctx, "input", pos=0, default=None)
        low = get_arg(ctx, "min_val", pos=1, default=-1.0)
        high = get_arg(ctx, "max_val", pos=2, default=1.0)
        source_trt = add_missing_trt_tensors(ctx.network, [source])[0]
        layer = ctx.network.add_activation(input=source_trt, type=trt.ActivationType.CLIP)
        layer.alpha = float(low)
        layer.beta = float(high)
        ctx.method_return._trt = layer.get_output(0)


@contextlib.contextmanager
def torch_left_as_found() -> Iterator[None]:
    """Undo what a torch2trt conversion leaves on `torch.Tensor` (see the module docstring)."""
    before = dict(vars(torch.Tensor))
    try:
        yield
    finally:
        for name in set(vars(torch.Tensor)) - set(before):
            delattr(torch.Tensor, name)
        for name, value in before.items():
            if vars(torch.Tensor).get(name) is not value:
                setattr(torch.Tensor, name, value)
