"""Patch selection that never waits for the GPU: a fixed number of patches, by top-k index.

`Refiner._refine_patches` turns the selection map into indices with `nonzero`, whose result
size only the GPU knows: the host waits for it every frame, and a CUDA graph cannot contain it
(capture fails with cudaErrorStreamCaptureInvalidated). In sampling mode the candidates are
always the k = sample_pixels // 16 patches of highest error, so `SyncFreeRefiner` takes those k
indices from top-k directly, crops, refines and scatters exactly k patches, and with
`prevent_oversampling` (skip patches whose error is 0) it keeps the coarse values of the skipped
ones (`torch.where`) instead of dropping them from the batch. Same patches refined, same
values written: the result equals `Refiner`'s (tests/test_sync_free.py); every shape is fixed,
so the whole forward pass can be captured. Thresholding mode selects a data-dependent number of
patches and stays on `Refiner`'s path.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from edge_matte.model.refiner import (
    PATCH,
    ConvsFn,
    Refiner,
    _half_resolution,
    crop_patch,
    replace_patch,
)


class SyncFreeRefiner(Refiner):
    """`Refiner` with sampling mode's selection by top-k index (no host synchronisation)."""

    @classmethod
    def like(cls, refiner: Refiner) -> SyncFreeRefiner:
        """A SyncFreeRefiner with `refiner`'s settings and (copied) parameters, in its mode."""
        new = cls(*refiner.settings())
        new.load_state_dict(refiner.state_dict())
        weight = refiner.conv1.weight
        return new.to(weight.device, weight.dtype).train(refiner.training)

    def patch_count(self, height: int, width: int) -> int:
        """Patches refined per image of a (height, width) padded input: top-k's k."""
        return min(self.sample_pixels // (PATCH * PATCH), (height // PATCH) * (width // PATCH))

    def _refine_patches(
        self, src_bgr: Tensor, coarse: Tensor, err: Tensor, convs: ConvsFn
    ) -> tuple[Tensor, Tensor, Tensor]:
        if self.mode != "sampling":
            return super()._refine_patches(src_bgr, coarse, err, convs)
        b, _, h, w = src_bgr.shape
        err = F.interpolate(err, (h // 4, w // 4), mode="bilinear", align_corners=False)
        flat = err.view(b, -1)
        top = flat.topk(self.patch_count(h, w), dim=1, sorted=False).indices  # (B, k)
        keep = flat.gather(1, top).gt(0) if self.prevent_oversampling else None
        idx = (
            torch.arange(b, device=top.device).repeat_interleave(top.size(1)),
            top.flatten() // (w // 4),
            top.flatten() % (w // 4),
        )
        out = F.interpolate(coarse[:, -4:], (h, w), mode="bilinear", align_corners=False)
        half, full = self._paddings()
        x = crop_patch(_half_resolution(coarse, src_bgr), idx, PATCH // 2, half)
        y = crop_patch(src_bgr, idx, PATCH, full)
        refined = convs(x, y)
        if keep is not None:  # skipped patches keep the coarse values they have
            coarse_patches = crop_patch(out, idx, PATCH, 0)
            refined = torch.where(keep.flatten()[:, None, None, None], refined, coarse_patches)
        out = replace_patch(out, refined, idx)
        ref = torch.zeros_like(flat).scatter_(
            1, top, keep.to(flat.dtype) if keep is not None else 1.0
        )
        return out[:, :1], out[:, 1:], ref.view(b, 1, h // 4, w // 4)
