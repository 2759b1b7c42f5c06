"""ms/frame of the base network, the refiner and the whole model: TensorRT FP16 vs torch FP32 and FP16.

Run on the GPU being measured (a Jetson, or any CUDA machine with TensorRT and torch2trt):

    python benchmarks/trt_bench.py --weights pytorch_mobilenetv2.pth [--sizes 720p,1080p,4k]

Sizes use the paper's settings: HD at backbone scale 1/4 with 80,000 sample pixels (5,000
patches), 4K at 1/8 with 320,000. For each size and variant it times, with the GPU synchronised:
`base` (the base network on its input), `refiner` (the refiner's convolutions on every sampled
patch: one fixed-count engine call for TensorRT), `model` (the whole forward pass on tensors
already on the GPU) and `frame` (numpy BGR in, Matte out: adds the uploads and downloads listed
in `edge_matte/engine/trt.py`). The row "edge-matte torch-cuda..." is the deployed engine without
TensorRT (CUDA graphs, sync-free patch selection, the fastest of FP16/FP32 with and without
region inference); `vs_official_fp32_model` is its frame time over the official-style eager
FP32 model on GPU tensors (`torch-fp32`'s model_ms, same run; the target is <= 1/3). It also reports each variant's alpha error against torch FP32
(mean and max abs) on a synthetic frame. Without --weights it uses seeded random weights, which
time the same but make the error figures meaningless. torch2trt missing: the TensorRT rows are
skipped with the reason; no CUDA: nothing to measure, exit 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edge_matte.config.schema import MattingConfig
from edge_matte.engine.select import BUILDERS
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.engine.trt import TrtEngine, engine_cache
from edge_matte.errors import EngineError
from edge_matte.model import MattingRefine, load_model
from edge_matte.model.refiner import PATCH

SIZES = {  # name: (width, height, backbone_scale, sample_pixels)
    "720p": (1280, 720, 0.25, 80_000),
    "1080p": (1920, 1080, 0.25, 80_000),
    "4k": (3840, 2160, 0.125, 320_000),
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("trt_bench: needs a CUDA GPU; none here", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights or _random_weights(Path(scratch) / "random.pth")
        rows = []
        for name in args.sizes.split(","):
            rows += _bench_size(name, weights, args)
    report = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "tensorrt": _tensorrt_version(),
        "machine": platform.machine(),
        "weights": str(args.weights) if args.weights else "random (timing only)",
        "rows": rows,
    }
    _print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="MobileNetV2 checkpoint")
    parser.add_argument("--sizes", default="720p,1080p,4k", help=f"from {', '.join(SIZES)}")
    parser.add_argument("--iterations", type=int, default=50, help="timed runs per figure")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache/edge-matte/bench-engines"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def _bench_size(name: str, weights: Path, args: argparse.Namespace) -> list[dict]:
    width, height, scale, pixels = SIZES[name]
    config = MattingConfig(weights=weights, backbone_scale=scale, refine_sample_pixels=pixels)
    image, plate = _scene(height, width)
    fp32 = load_model(weights, backbone_scale=scale, refine_sample_pixels=pixels).cuda()
    fp16 = load_model(weights, backbone_scale=scale, refine_sample_pixels=pixels).cuda().half()
    reference = _alpha(fp32, image, plate)
    rows = []
    for variant, model in (("torch-fp32", fp32), ("torch-fp16", fp16)):
        figures = _time_model(model, model.base, model.refiner.convs, height, width, args)
        rows.append(_row(name, variant, figures, _alpha(model, image, plate), reference))
    # TorchEngine runs FP16 on CUDA: the deployed torch path, numpy frames in and out.
    torch_engine = TorchEngine.from_model(fp16, "cuda")
    rows[-1]["frame_ms"] = round(_time(lambda: torch_engine.matte(image, plate), args), 2)
    torch_engine.close()
    rows.append(
        _torch_cuda_row(name, config, height, width, image, plate, reference, rows[0], args)
    )
    try:
        engine = TrtEngine(config, engine_cache(args.cache_dir))
        base, convs = engine.prepare(height, width)
    except EngineError as err:
        print(f"trt_bench: {name}: TensorRT skipped: {err}", file=sys.stderr)
        return rows
    model = engine.model
    figures = _time_model(model, base, convs, height, width, args)
    figures["frame"] = _time(lambda: engine.matte(image, plate), args)
    alpha = engine.matte(image, plate).alpha
    rows.append(_row(name, engine.name, figures, alpha, reference))
    engine.close()
    return rows


def _torch_cuda_row(
    size: str,
    config: MattingConfig,
    height: int,
    width: int,
    image,
    plate,
    reference,
    official,
    args,
) -> dict:
    """The deployed torch-cuda engine without TensorRT (CUDA graphs, sync-free selection, the
    fastest of FP16/FP32 with and without regions, as `select` builds it), numpy frame in and
    out, against the official-style eager FP32 model on tensors already on the GPU."""
    engine = BUILDERS["torch-cuda"](config, None)  # what the daemon runs without TensorRT
    engine.prepare(height, width)
    frame = _time(lambda: engine.matte(image, plate), args)
    row = _row(
        size,
        f"edge-matte {engine.name}",
        {"frame": frame},
        engine.matte(image, plate).alpha,
        reference,
    )
    row["vs_official_fp32_model"] = round(frame / official["model_ms"], 3)  # target <= 1/3
    timings = getattr(engine, "timings", {})  # FastestChoice: every variant it timed
    row["variant_ms"] = {name: round(s * 1e3, 2) for name, s in timings.items()}
    engine.close()
    return row


def _time_model(model: MattingRefine, base, convs, height: int, width: int, args) -> dict:
    """ms of base, refiner (all k patches) and the whole model, on GPU tensors of the model's dtype."""
    dtype = next(model.parameters()).dtype
    src = torch.rand((1, 3, height, width), device="cuda", dtype=dtype)
    bgr = torch.rand_like(src)
    x = torch.rand((1, 6, *model.base_size(height, width)), device="cuda", dtype=dtype)
    half, full = model.refiner.patch_shapes
    k = min(model.refiner.sample_pixels // (PATCH * PATCH), (height // PATCH) * (width // PATCH))
    patches_x = torch.rand((k, *half), device="cuda", dtype=dtype)
    patches_y = torch.rand((k, *full), device="cuda", dtype=dtype)
    with torch.inference_mode():
        return {
            "base": _time(lambda: base(x), args),
            "refiner": _time(lambda: convs(patches_x, patches_y), args),
            "model": _time(lambda: model.forward_with(src, bgr, base, convs), args),
        }


def _time(fn: Callable[[], object], args: argparse.Namespace) -> float:
    """Median ms of `fn` over the timed iterations, the GPU synchronised around each."""
    for _ in range(args.warmup):
        fn()
    samples = []
    for _ in range(args.iterations):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - started) * 1e3)
    return float(np.median(samples))


def _alpha(model: MattingRefine, image: np.ndarray, plate: np.ndarray) -> np.ndarray:
    dtype = next(model.parameters()).dtype

    def tensor(bgr: np.ndarray) -> torch.Tensor:
        rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None]
        return rgb.to("cuda", dtype) / 255

    with torch.inference_mode():
        pha = model(tensor(image), tensor(plate))[0]
    return pha[0, 0].float().cpu().numpy()


def _row(size: str, variant: str, figures: dict, alpha: np.ndarray, reference: np.ndarray) -> dict:
    error = np.abs(alpha - reference)
    return {
        "size": size,
        "variant": variant,
        **{f"{key}_ms": round(value, 2) for key, value in figures.items()},
        "alpha_mean_abs_error": float(error.mean()),
        "alpha_max_abs_error": float(error.max()),
    }


def _scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth plate and a frame with a textured block in front of it (BGR uint8)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    plate = np.stack(
        [xs * 255 // width, ys * 255 // height, (xs + ys) * 127 // (width + height)], -1
    )
    plate = plate.astype(np.uint8)
    image = plate.copy()
    top, left = height // 4, width // 3
    image[top:, left : 2 * left] = rng.integers(0, 256, (height - top, left, 3), dtype=np.uint8)
    return image, plate


def _random_weights(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(MattingRefine().state_dict(), path)
    return path


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def _print_table(report: dict) -> None:
    print(f"GPU: {report['gpu']}; torch {report['torch']}; TensorRT {report['tensorrt']}")
    print(f"weights: {report['weights']}")
    columns = [
        "size",
        "variant",
        "base_ms",
        "refiner_ms",
        "model_ms",
        "frame_ms",
        "vs_official_fp32_model",
    ]
    print("| " + " | ".join([*columns, "alpha err mean / max"]) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for row in report["rows"]:
        cells = [str(row.get(column, "-")) for column in columns]
        error = f"{row['alpha_mean_abs_error']:.1e} / {row['alpha_max_abs_error']:.1e}"
        print("| " + " | ".join([*cells, error]) + " |")
    for row in report["rows"]:
        if "variant_ms" in row:
            print(f"{row['size']}: torch-cuda variants timed at prepare (ms): {row['variant_ms']}")


if __name__ == "__main__":
    sys.exit(main())
