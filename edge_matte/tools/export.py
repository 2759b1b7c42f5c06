"""`edge-matte export onnx`: the model's static pieces, and the whole model in "full" mode, as fixed-shape ONNX.

For `trtexec` and ONNX Runtime users; the appliance itself builds its TensorRT engines from the
same modules with torch2trt (`engine/trt.py`). Written to --output-dir:

- base.onnx: `BaseNetwork`, x (1, 6, h, w) -> base (1, 37, h, w), h x w the backbone-scaled size.
- refiner_convs.onnx: `PatchRefiner`, x (N, 42, 8, 8), y (N, 6, 8, 8) -> out (N, 4, 4, 4) for
  N = --patch-count (2x2 / 4x4 / 4x4 patches with --refine-kernel-size 1).
- model_full.onnx: `MattingRefine` in "full" mode, src, bgr (1, 3, H, W) RGB 0..1 -> pha
  (1, 1, H, W), fgr (1, 3, H, W): the one mode with no data-dependent step (the official code
  calls it a debugging mode; it refines every pixel, so it is the slowest).
- export.json: the files' inputs, outputs and shapes, the settings and the weights' digest.

Between base and refiner, patch selection (top-k or threshold), cropping and scattering are
not in any graph: run them as `Refiner._refine_patches` does, padding the selected patches to N
(`engine/static.py`). The TorchScript-based exporter (`dynamo=False`) is used: it needs no
onnxscript and is the default of the older torch that JetPack ships. torch is imported when an
export runs, not when the CLI builds its parser.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_matte import atomic
from edge_matte.errors import EdgeMatteError, EngineError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from edge_matte.model import MattingRefine

_LOG = logging.getLogger(__name__)

OPSET = 17
EXIT_FAILURE = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-matte export onnx`."""
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", type=Path, help="BackgroundMattingV2 MobileNetV2 checkpoint")
    weights.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights (to test an export/runtime tool chain; mattes nothing)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    parser.add_argument("--width", type=int, required=True, help="frame width, a multiple of 4")
    parser.add_argument("--height", type=int, required=True, help="frame height, a multiple of 4")
    parser.add_argument(
        "--backbone-scale", type=float, default=0.25, help="base network scale (0.25 HD, 0.125 4K)"
    )
    parser.add_argument(
        "--patch-count",
        type=int,
        default=None,
        help="patches per refiner call (default: --refine-sample-pixels / 16, at most all patches)",
    )
    parser.add_argument(
        "--refine-sample-pixels",
        type=int,
        default=80_000,
        help="sampling-mode pixels the default patch count is made for",
    )
    parser.add_argument(
        "--refine-kernel-size",
        type=int,
        choices=(1, 3),
        default=3,
        help="refiner kernel size of the checkpoint (1: 2x2 patches)",
    )
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    parser.add_argument(
        "--output-dir", type=Path, required=True, help="directory the .onnx files are written to"
    )


def main_export(args: argparse.Namespace) -> int:
    """Run `edge-matte export onnx`: 0 on success, 1 on failure, 2 on invalid arguments."""
    problem = _argument_problem(args)
    if problem:
        print(f"edge-matte: export onnx: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        model, origin = _model(args)
        written = export_onnx(
            model, args.height, args.width, args.output_dir, args.patch_count, args.opset, origin
        )
    except (EdgeMatteError, ValueError) as err:
        print(f"edge-matte: export onnx: {err}", file=sys.stderr)
        return EXIT_FAILURE
    for path in written:
        print(path)
    return 0


def export_onnx(
    model: MattingRefine,
    height: int,
    width: int,
    output_dir: Path,
    patch_count: int | None = None,
    opset: int = OPSET,
    origin: str = "",
) -> list[Path]:
    """Write base.onnx, refiner_convs.onnx, model_full.onnx and export.json; return their paths.

    `model` must be in "full" mode (its base and refiner serve all three graphs). Raises
    ValueError for shapes the model refuses, EngineError when the exporter fails.
    """
    import torch

    from edge_matte.engine.static import (
        FullMatting,
        base_example,
        default_patch_count,
        patch_examples,
    )
    from edge_matte.model import BaseNetwork, PatchRefiner

    model = model.eval()
    count = patch_count or default_patch_count(model, height, width)
    cpu, fp32 = torch.device("cpu"), torch.float32
    frame = torch.rand((1, 3, height, width))
    graphs = [
        (
            "base.onnx",
            BaseNetwork(model),
            (base_example(model, height, width, fp32, cpu),),
            ["x"],
            ["base"],
        ),
        (
            "refiner_convs.onnx",
            PatchRefiner(model.refiner),
            patch_examples(model.refiner, count, fp32, cpu),
            ["x", "y"],
            ["out"],
        ),
        (
            "model_full.onnx",
            FullMatting(model),
            (frame, torch.rand_like(frame)),
            ["src", "bgr"],
            ["pha", "fgr"],
        ),
    ]
    described = {}
    written = []
    for name, module, inputs, input_names, output_names in graphs:
        path = Path(output_dir) / name
        atomic.write_bytes(
            path, _onnx_bytes(module.eval(), inputs, input_names, output_names, opset)
        )
        with torch.inference_mode():
            outputs = module(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        described[name] = {
            "inputs": {n: list(x.shape) for n, x in zip(input_names, inputs, strict=True)},
            "outputs": {n: list(y.shape) for n, y in zip(output_names, outputs, strict=True)},
        }
        _LOG.info("wrote %s", path)
        written.append(path)
    manifest = {
        "weights": origin,
        "input": {"height": height, "width": width},
        "backbone_scale": model.backbone_scale,
        "refine_kernel_size": model.refiner.kernel_size,
        "patch_count": count,
        "opset": opset,
        "graphs": described,
    }
    manifest_path = Path(output_dir) / "export.json"
    atomic.write_text(manifest_path, json.dumps(manifest, indent=2))
    return [*written, manifest_path]


def _onnx_bytes(
    module: nn.Module,
    inputs: Sequence[Tensor],
    input_names: list[str],
    output_names: list[str],
    opset: int,
) -> bytes:
    """`module` traced on `inputs` into an ONNX model with exactly their shapes."""
    import torch

    options: dict[str, Any] = (
        {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    )
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Fixed shapes are the point: the tracer's "treated as a constant" warnings say just that;
        # newer torch flags the TorchScript exporter itself as legacy, and its constant folding
        # notes the slices it leaves to the runtime.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        try:
            torch.onnx.export(
                module,
                tuple(inputs),
                buffer,  # type: ignore[arg-type]  # torch's annotation omits the file objects it writes to
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                **options,
            )
        except RuntimeError as err:
            raise EngineError(f"ONNX export of {type(module).__name__} failed: {err}") from err
    return buffer.getvalue()


def _argument_problem(args: argparse.Namespace) -> str | None:
    from edge_matte.model.refiner import PATCH

    for name in ("width", "height"):
        value = getattr(args, name)
        if value < PATCH or value % PATCH:
            return f"--{name} must be a positive multiple of 4 (the refiner's 4x4 patches), got {value}"
    if not 0 < args.backbone_scale <= 0.5:
        return f"--backbone-scale must be in (0, 0.5], got {args.backbone_scale}"
    if args.patch_count is not None and args.patch_count < 1:
        return f"--patch-count must be >= 1, got {args.patch_count}"
    if args.refine_sample_pixels < PATCH * PATCH:
        return f"--refine-sample-pixels must be >= 16, got {args.refine_sample_pixels}"
    return None


def _model(args: argparse.Namespace) -> tuple[MattingRefine, str]:
    """The "full"-mode model to export and where its weights came from."""
    from edge_matte.model import load_model, weights_digest

    settings = {
        "backbone_scale": args.backbone_scale,
        "refine_mode": "full",
        "refine_sample_pixels": args.refine_sample_pixels,
        "refine_kernel_size": args.refine_kernel_size,
    }
    if args.random_weights:
        from edge_matte.model.random_weights import random_model

        return random_model(args.seed, **settings), f"random (seed {args.seed})"
    return load_model(args.weights, **settings), f"sha256:{weights_digest(args.weights)}"
