"""BackgroundMattingV2 model: official layout, argument checks, refine modes, the static split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_builders import random_model
from torch import nn
from torch.nn import functional as F

from edge_matte.model import BaseNetwork, MattingBase, MattingRefine, PatchRefiner

LAYOUT = Path(__file__).parent / "fixtures" / "bmv2_mobilenetv2_layout.txt"
MODES = ("full", "sampling", "thresholding")


def random_pair(height: int, width: int, batch: int = 1, seed: int = 1):
    """A source and a background that differ in the lower half (where a 'subject' stands)."""
    gen = torch.Generator().manual_seed(seed)
    bgr = torch.rand(batch, 3, height, width, generator=gen)
    src = bgr.clone()
    src[..., height // 2 :, :] = torch.rand(batch, 3, height - height // 2, width, generator=gen)
    return src, bgr


def run(model: MattingRefine, src: torch.Tensor, bgr: torch.Tensor):
    with torch.inference_mode():
        return model(src.clone(), bgr.clone())


def read_layout() -> list[tuple[str, list[int]]]:
    entries = []
    for line in LAYOUT.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            entries.append((key, [int(s) for s in shape.strip("[]").split(",") if s.strip()]))
    return entries


def test_parameter_count_and_entries_match_the_paper():
    model = MattingRefine()
    assert sum(p.numel() for p in model.parameters()) == 5_006_839
    assert len(model.state_dict()) == 382


def test_state_dict_layout_matches_the_official_model():
    got = [(key, list(value.shape)) for key, value in MattingRefine().state_dict().items()]
    assert got == read_layout()


def test_kernel_size_one_changes_only_the_refiner_kernels():
    expected = dict(read_layout())
    for key, value in MattingRefine(refine_kernel_size=1).state_dict().items():
        shape = expected[key]
        if key.startswith("refiner.conv") and key.endswith("weight"):
            shape = [*shape[:2], 1, 1]
        assert list(value.shape) == shape, key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet50"}, "only mobilenetv2"),
        ({"backbone_scale": 0.75}, "backbone_scale"),
        ({"backbone_scale": 0.0}, "backbone_scale"),
        ({"refine_mode": "patches"}, "refine mode"),
        ({"refine_kernel_size": 5}, "kernel size"),
        ({"refine_sample_pixels": 8}, "sample pixels"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MattingRefine(**kwargs)


@pytest.mark.parametrize(
    ("src_shape", "bgr_shape", "message"),
    [
        ((1, 3, 62, 96), (1, 3, 62, 96), "divisible by 4"),
        ((1, 3, 64, 90), (1, 3, 64, 90), "divisible by 4"),
        ((1, 3, 64, 96), (1, 3, 64, 92), "same shape"),
        ((1, 4, 64, 96), (1, 4, 64, 96), r"\(B, 3, H, W\)"),
        ((1, 3, 4, 8), (1, 3, 4, 8), "nothing for the base network"),
    ],
)
def test_bad_inputs_raise_value_error(src_shape, bgr_shape, message):
    model = MattingRefine(backbone_scale=0.125).eval()
    with pytest.raises(ValueError, match=message):
        run(model, torch.rand(src_shape), torch.rand(bgr_shape))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_every_mode_gives_bounded_outputs_of_the_documented_shapes(mode, kernel_size):
    model = random_model(
        refine_mode=mode, refine_kernel_size=kernel_size, refine_sample_pixels=1600
    )
    src, bgr = random_pair(64, 96, batch=2)
    pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm = run(model, src, bgr)
    assert pha.shape == (2, 1, 64, 96) and fgr.shape == (2, 3, 64, 96)
    assert pha_sm.shape == (2, 1, 16, 24) and fgr_sm.shape == (2, 3, 16, 24)
    assert err_sm.shape == (2, 1, 16, 24) and ref_sm.shape == (2, 1, 16, 24)
    for tensor in (pha, fgr, pha_sm, fgr_sm, err_sm):
        assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    assert float(pha.std()) > 0.05  # not clamped flat
    assert set(ref_sm.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("size", [(132, 100), (68, 92), (4, 8)])
def test_base_sizes_that_are_not_multiples_of_16_work(size):
    model = random_model(refine_mode="full", backbone_scale=0.25 if size[0] > 4 else 0.5)
    src, bgr = random_pair(*size)
    pha = run(model, src, bgr)[0]
    assert pha.shape == (1, 1, *size)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_sampling_and_thresholding_agree_with_full_when_every_patch_is_refined(kernel_size):
    src, bgr = random_pair(64, 96)
    full = run(random_model(refine_mode="full", refine_kernel_size=kernel_size), src, bgr)
    every_patch = {
        "sampling, exactly all pixels": {"refine_sample_pixels": 64 * 96},
        "sampling, more than all pixels": {"refine_sample_pixels": 10**7},
    }
    for name, kwargs in every_patch.items():
        model = random_model(
            refine_mode="sampling",
            refine_kernel_size=kernel_size,
            refine_prevent_oversampling=False,
            **kwargs,
        )
        out = run(model, src, bgr)
        assert bool(out[5].all()), name
        torch.testing.assert_close(out[0], full[0], rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(out[1], full[1], rtol=0, atol=1e-5, msg=name)
    # The error is clamped to [0, 1] and the test is err > threshold: only a negative threshold takes all.
    model = random_model(
        refine_mode="thresholding", refine_threshold=-1.0, refine_kernel_size=kernel_size
    )
    out = run(model, src, bgr)
    assert bool(out[5].all())
    torch.testing.assert_close(out[0], full[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], full[1], rtol=0, atol=1e-5)


def test_sampling_refines_the_top_k_patches_and_upsamples_the_rest():
    model = random_model(refine_mode="sampling", refine_sample_pixels=16 * 10)
    src, bgr = random_pair(64, 96)
    pha, _, pha_sm, _, err_sm, ref_sm = run(model, src, bgr)
    assert int(ref_sm.sum()) == 10
    err = F.interpolate(err_sm, (16, 24), mode="bilinear", align_corners=False)
    assert float(err[ref_sm.bool()].min()) >= float(err[~ref_sm.bool()].max())
    coarse = F.interpolate(pha_sm, (64, 96), mode="bilinear", align_corners=False)
    selected = F.interpolate(ref_sm, (64, 96), mode="nearest").bool()
    torch.testing.assert_close(pha[~selected], coarse[~selected].clamp(0, 1))
    assert float((pha[selected] - coarse[selected]).abs().max()) > 1e-3


def test_prevent_oversampling_skips_patches_without_error():
    model = random_model(refine_mode="sampling")
    with torch.no_grad():
        model.decoder.conv4.bias[4] = -100.0  # error clamps to 0 everywhere
    src, bgr = random_pair(64, 96)
    pha, _, pha_sm, _, _, ref_sm = run(model, src, bgr)
    assert int(ref_sm.sum()) == 0
    coarse = F.interpolate(pha_sm, (64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pha, coarse.clamp(0, 1))


def test_thresholding_selects_exactly_the_patches_above_the_threshold():
    model = random_model(refine_mode="thresholding", refine_threshold=0.3)
    src, bgr = random_pair(64, 96)
    _, _, _, _, err_sm, ref_sm = run(model, src, bgr)
    err = F.interpolate(err_sm, (16, 24), mode="bilinear", align_corners=False)
    assert 0 < int(ref_sm.sum()) < ref_sm.numel()
    assert torch.equal(ref_sm.bool(), err > 0.3)


@pytest.mark.parametrize("mode", MODES)
def test_outputs_are_deterministic(mode):
    model = random_model(refine_mode=mode, refine_sample_pixels=1600)
    src, bgr = random_pair(64, 96)
    first, second = run(model, src, bgr), run(model, src, bgr)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_matting_base_returns_full_size_coarse_outputs():
    base = MattingBase().eval()
    base.load_state_dict(random_model().state_dict(), strict=False)
    src, bgr = random_pair(32, 48)
    with torch.inference_mode():
        pha, fgr, err, hid = base(src, bgr)
    assert pha.shape == (1, 1, 32, 48) and fgr.shape == (1, 3, 32, 48)
    assert err.shape == (1, 1, 32, 48) and hid.shape == (1, 32, 32, 48)
    assert float(hid.min()) >= 0.0 and float(fgr.min()) >= 0.0 and float(fgr.max()) <= 1.0


class FixedCount:
    """Runs a static patch module over patches padded up to its fixed count, as a TensorRT engine would."""

    def __init__(self, module, count: int) -> None:
        self.module, self.count = module, count

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, x.shape[0], self.count):
            xs, ys = x[start : start + self.count], y[start : start + self.count]
            n = xs.shape[0]
            xs = torch.cat([xs, xs.new_zeros((self.count - n, *xs.shape[1:]))])
            ys = torch.cat([ys, ys.new_zeros((self.count - n, *ys.shape[1:]))])
            outputs.append(self.module(xs, ys)[:n])
        return torch.cat(outputs)


def export(module: nn.Module, *example: torch.Tensor):
    """A static-shape graph of the module (rejects any other input shape), like a built engine."""
    with torch.no_grad():
        return torch.export.export(module, example).module()


def test_static_pieces_in_place_of_the_modules_give_the_same_result():
    src, bgr = random_pair(64, 96)
    patches = random_model(refine_mode="sampling", refine_sample_pixels=64 * 96 // 2)
    base = export(BaseNetwork(patches), torch.rand(1, 6, 16, 24))
    (x_side, y_side) = patches.refiner.patch_shapes
    convs = FixedCount(
        export(PatchRefiner(patches.refiner), torch.rand(50, *x_side), torch.rand(50, *y_side)), 50
    )
    for mode in ("sampling", "thresholding"):
        patches.refiner.mode = mode
        with torch.inference_mode():
            split = patches.forward_with(src.clone(), bgr.clone(), base, convs)
        whole = run(patches, src, bgr)
        assert 0 < int(whole[5].sum()) < whole[5].numel()
        for a, b in zip(split, whole, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    full = random_model(refine_mode="full")
    full_convs = export(
        PatchRefiner(full.refiner), torch.rand(1, 42, 38, 54), torch.rand(1, 6, 68, 100)
    )
    with torch.inference_mode():
        split = full.forward_with(src.clone(), bgr.clone(), base, full_convs)
    for a, b in zip(split, run(full, src, bgr), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_patch_shapes_follow_the_kernel_size():
    assert MattingRefine().refiner.patch_shapes == ((42, 8, 8), (6, 8, 8))
    assert MattingRefine(refine_kernel_size=1).refiner.patch_shapes == ((42, 2, 2), (6, 4, 4))
