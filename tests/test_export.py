"""`edge-matte export onnx`: fixed-shape graphs that ONNX Runtime runs to torch's results."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from model_builders import random_model

from edge_matte.engine.static import FixedCountConvs, FullMatting
from edge_matte.model import BaseNetwork, PatchRefiner, load_model
from edge_matte.tools.export import add_arguments, main_export

onnx = pytest.importorskip("onnx", reason="needs onnx (the 'onnx' extra)")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (the 'onnx' extra)")

HEIGHT, WIDTH, COUNT = 64, 96, 20
TOLERANCE = 1e-4


def run_export(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return main_export(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(output dir, the exported model in torch) for a 64x96 export of a random-weight checkpoint."""
    root = tmp_path_factory.mktemp("export")
    weights = root / "random.pth"
    torch.save(random_model(2).state_dict(), weights)
    size = ["--width", str(WIDTH), "--height", str(HEIGHT)]
    out = root / "onnx"
    assert (
        run_export(
            "--weights", str(weights), *size, "--patch-count", str(COUNT), "--output-dir", str(out)
        )
        == 0
    )
    return out, load_model(weights, refine_mode="full")


class Session:
    """An ONNX Runtime CPU session called like a torch module: tensors in, tensors out."""

    def __init__(self, path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor):
        outputs = self.session.run(
            None, {n: x.numpy() for n, x in zip(self.names, inputs, strict=True)}
        )
        tensors = tuple(torch.from_numpy(y) for y in outputs)
        return tensors[0] if len(tensors) == 1 else tensors


def frame_pair() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    bgr = torch.rand((1, 3, HEIGHT, WIDTH), generator=gen)
    src = bgr.clone()
    src[:, :, 20:, 30:70] = torch.rand((1, 3, HEIGHT - 20, 40), generator=gen)
    return src, bgr


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_writes_the_three_graphs_with_the_fixed_shapes_the_manifest_lists(exported) -> None:
    out, _ = exported
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["patch_count"] == COUNT and manifest["weights"].startswith("sha256:")
    expected_inputs = {
        "base.onnx": {"x": [1, 6, 16, 24]},
        "refiner_convs.onnx": {"x": [COUNT, 42, 8, 8], "y": [COUNT, 6, 8, 8]},
        "model_full.onnx": {"src": [1, 3, HEIGHT, WIDTH], "bgr": [1, 3, HEIGHT, WIDTH]},
    }
    for name, inputs in expected_inputs.items():
        graph = onnx.load(str(out / name)).graph
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
        assert shapes == inputs == manifest["graphs"][name]["inputs"], name
        for value in [*graph.input, *graph.output]:
            assert all(
                d.dim_value > 0 and not d.dim_param for d in value.type.tensor_type.shape.dim
            )


def test_base_graph_matches_torch(exported) -> None:
    out, model = exported
    x = torch.rand((1, 6, 16, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = BaseNetwork(model)(x)
    assert max_diff(Session(out / "base.onnx")(x), want) < TOLERANCE


def test_refiner_graph_matches_torch(exported) -> None:
    out, model = exported
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand((COUNT, 42, 8, 8), generator=gen), torch.rand((COUNT, 6, 8, 8), generator=gen)
    with torch.inference_mode():
        want = PatchRefiner(model.refiner)(x, y)
    assert max_diff(Session(out / "refiner_convs.onnx")(x, y), want) < TOLERANCE


def test_full_model_graph_gives_torch_alpha_and_foreground(exported) -> None:
    out, model = exported
    src, bgr = frame_pair()
    with torch.inference_mode():
        pha, fgr = model(src, bgr)[:2]
    got_pha, got_fgr = Session(out / "model_full.onnx")(src, bgr)
    assert max_diff(got_pha, pha) < TOLERANCE and max_diff(got_fgr, fgr) < TOLERANCE
    assert 0.05 < pha.mean().item() < 0.95  # a real matte, not a constant


@pytest.mark.parametrize("mode", ["sampling", "thresholding"])
def test_static_graphs_with_patch_selection_in_torch_give_the_model_output(exported, mode) -> None:
    """What an ONNX Runtime user does: the two graphs, with selection and padding in between."""
    out, full = exported
    model = random_model(2, refine_mode=mode, refine_sample_pixels=1600, refine_threshold=0.3)
    model.load_state_dict(full.state_dict())
    src, bgr = frame_pair()
    convs = FixedCountConvs(Session(out / "refiner_convs.onnx"), COUNT)
    with torch.inference_mode():
        want = model(src, bgr)[:2]
        got = model.forward_with(src, bgr, Session(out / "base.onnx"), convs)[:2]
    assert max(map(max_diff, got, want)) < TOLERANCE


def test_random_weights_with_kernel_size_one_export_its_patch_shapes(tmp_path) -> None:
    code = run_export(
        "--random-weights", "--seed", "5", "--width", "32", "--height", "32",
        "--refine-kernel-size", "1", "--output-dir", str(tmp_path),
    )  # fmt: skip
    assert code == 0
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["weights"] == "random (seed 5)"
    assert manifest["patch_count"] == 64  # 80,000 / 16, capped at the 8 x 8 patches of 32x32
    assert manifest["graphs"]["refiner_convs.onnx"]["inputs"] == {
        "x": [64, 42, 2, 2],
        "y": [64, 6, 4, 4],
    }
    model = random_model(5, refine_mode="full", refine_kernel_size=1)  # the exported weights
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand((64, 42, 2, 2), generator=gen), torch.rand((64, 6, 4, 4), generator=gen)
    with torch.inference_mode():
        want = PatchRefiner(model.refiner)(x, y)
    assert max_diff(Session(tmp_path / "refiner_convs.onnx")(x, y), want) < TOLERANCE


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--width", "98", "--height", "64"], "--width must be a positive multiple of 4"),
        (["--width", "96", "--height", "0"], "--height must be a positive multiple of 4"),
        (["--width", "96", "--height", "64", "--backbone-scale", "0.75"], "--backbone-scale"),
        (["--width", "96", "--height", "64", "--patch-count", "0"], "--patch-count"),
    ],
)
def test_invalid_arguments_exit_2_naming_the_option(tmp_path, capsys, argv, message) -> None:
    assert run_export("--random-weights", *argv, "--output-dir", str(tmp_path)) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_checkpoint_exits_1_naming_the_file(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.pth"
    code = run_export(
        "--weights",
        str(missing),
        "--width",
        "96",
        "--height",
        "64",
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert code == 1
    assert f"{missing}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_only_a_full_mode_model_is_one_static_graph() -> None:
    with pytest.raises(ValueError, match="refine_mode 'full'"):
        FullMatting(random_model(0, refine_mode="sampling"))
