"""Random weights in the official layout, for benchmarks, export tests and the test suite.

Speed does not depend on the weight values, but untrained default initialisation drives deep
activations towards zero (denormal floats, which are very slow on x86) and makes the error map
flat; these weights keep activations in a normal range and give the refiner patches to choose.
No weights are ever downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edge_matte.model.model import MattingRefine


def random_model(seed: int = 0, **kwargs: Any) -> MattingRefine:
    """MattingRefine with random weights and BN statistics, in eval mode.

    The output layers are scaled and biased so alpha spreads around 0.5 and the error is mostly
    above 0: outputs are not clamped flat and sampling/thresholding have patches to choose from.
    """
    torch.manual_seed(seed)
    model = MattingRefine(**kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                _present(module.running_mean).copy_(torch.randn(n, generator=gen) * 0.1)
                _present(module.running_var).copy_(torch.rand(n, generator=gen) + 0.5)
        for head in (model.decoder.conv4, model.refiner.conv4):
            head.weight.mul_(4.0)
            _present(head.bias)[0] = 0.5
        _present(model.decoder.conv4.bias)[4] = 0.3
    return model.eval()


def _present(tensor: torch.Tensor | None) -> torch.Tensor:
    """A BatchNorm statistic or conv bias, which every such layer of the model has."""
    if tensor is None:
        raise ValueError("random_model: a layer lacks its statistics or bias")
    return tensor
