"""BackgroundMattingV2 in plain torch (no torchvision), MobileNetV2 variant, and its checkpoints.

`model` wires `mobilenetv2` -> `aspp` -> `decoder` -> `refiner` like the official code;
`checkpoint` loads the official weights safely and strictly.
"""

from edge_matte.model.checkpoint import load_model, load_state_dict, weights_digest
from edge_matte.model.model import BaseNetwork, MattingBase, MattingRefine, PatchRefiner

__all__ = [
    "BaseNetwork",
    "MattingBase",
    "MattingRefine",
    "PatchRefiner",
    "load_model",
    "load_state_dict",
    "weights_digest",
]
