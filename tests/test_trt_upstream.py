"""The two static pieces converted by upstream torch2trt, over a recording TensorRT stand-in.

No GPU or TensorRT here, but torch2trt's converters are plain Python: run through the project's
`Torch2TrtConverter` (which registers the converters it adds) over `tensorrt_standin`, they show
the network TensorRT would be asked to build. Every torch call met must have a real converter
(torch2trt prints "Encountered known unsupported method" for the rest and bakes or drops them),
and the network must hold one layer per convolution, batch norm, activation and resize of the
module: MobileNetV2's 34 ReLU6 clips included. The stand-in's builder then fails as TensorRT's
can (it returns None), which must be an EngineError, not a broken engine.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import tensorrt_standin as standin
import torch
from model_builders import random_model
from torch import nn

from edge_matte.config.schema import MattingConfig
from edge_matte.engine.cache import EngineCache
from edge_matte.engine.select import BUILDERS, EngineChain
from edge_matte.engine.static import base_example, patch_examples
from edge_matte.engine.trt import TrtEngine
from edge_matte.errors import EngineError
from edge_matte.model.model import BaseNetwork, PatchRefiner

pytestmark = pytest.mark.skipif(not standin.TORCH2TRT.is_dir(), reason=standin.MISSING)


@pytest.fixture(scope="module")
def converter():
    """The project's converter over upstream torch2trt and the stand-in (sys.modules restored)."""
    saved = {name: module for name, module in sys.modules.items() if _is_trt(name)}
    standin.load_torch2trt()
    from edge_matte.engine.trt import Torch2TrtConverter

    made = Torch2TrtConverter(device="cpu")
    standin.shape_converters()  # the converters it registered, too
    yield made
    for name in [name for name in sys.modules if _is_trt(name)]:
        del sys.modules[name]
    sys.modules.update(saved)


def _is_trt(name: str) -> bool:
    return name == "tensorrt" or name.split(".", maxsplit=1)[0] == "torch2trt"


def convert(converter, module: nn.Module, inputs, capfd) -> tuple[standin.Network, str]:
    """Convert with the stand-in; (the network torch2trt built, what it printed)."""
    standin.Builder.networks.clear()
    tensor_class = dict(vars(torch.Tensor))
    with torch.no_grad(), pytest.raises(EngineError, match="builder returned no engine"):
        converter.convert(module.eval(), inputs)
    assert dict(vars(torch.Tensor)) == tensor_class  # torch2trt's leftovers removed
    (network,) = standin.Builder.networks
    return network, capfd.readouterr().out


def count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def activations(network: standin.Network) -> Counter:
    return Counter(
        (layer.kwargs["type"].name, layer.attributes.get("alpha"), layer.attributes.get("beta"))
        for layer in network.of_kind("activation")
    )


def assert_all_converted(network: standin.Network, printed: str) -> None:
    """No torch call without a converter, and no layer fed by a tensor the network never made."""
    assert "unsupported method" not in printed, printed
    made = {id(t) for layer in network.layers for t in layer.outputs} | {
        id(t) for t in network.inputs
    }
    orphans = [
        layer.kind for layer in network.layers if any(id(t) not in made for t in layer.inputs)
    ]
    assert orphans == []


def test_base_network_converts_with_all_34_relu6_clips(converter, capfd) -> None:
    model = random_model(0)
    module = BaseNetwork(model)
    example = base_example(model, 64, 96, torch.float32, torch.device("cpu"))
    network, printed = convert(converter, module, [example], capfd)
    assert_all_converted(network, printed)
    base = nn.ModuleList([model.backbone, model.aspp, model.decoder])  # not the refiner
    assert count(base, nn.ReLU6) == 34
    assert activations(network) == {
        ("CLIP", 0.0, 6.0): 34,
        ("RELU", None, None): 6 + 3,  # ASPP's branches and projection; the decoder's stages
    }
    assert len(network.of_kind("convolution_nd")) == count(base, nn.Conv2d)
    assert len(network.of_kind("scale_nd")) == count(base, nn.BatchNorm2d)
    assert len(network.of_kind("resize")) == 5  # ASPP pooling and the decoder's four stages
    assert [t.shape for t in network.outputs] == [(1, 37, 16, 24)]


def test_refiner_convolutions_convert(converter, capfd) -> None:
    refiner = random_model(0).refiner
    inputs = patch_examples(refiner, 12, torch.float32, torch.device("cpu"))
    network, printed = convert(converter, PatchRefiner(refiner), list(inputs), capfd)
    assert_all_converted(network, printed)
    assert activations(network) == {("RELU", None, None): 3}
    assert len(network.of_kind("convolution_nd")) == 4
    assert len(network.of_kind("scale_nd")) == 3
    assert len(network.of_kind("resize")) == 1
    assert [t.shape for t in network.outputs] == [(12, 4, 4, 4)]


def test_a_failed_tensorrt_build_falls_back_and_is_not_repeated_at_the_next_start(
    converter, tmp_path
) -> None:
    """TensorRT's builder returning None (torch2trt then wraps engine=None) is a fallback, once."""
    weights = tmp_path / "random.pth"
    torch.save(random_model(0, refine_sample_pixels=1600).state_dict(), weights)
    config = MattingConfig(weights=weights, refine_sample_pixels=1600, engine="trt")
    cache = EngineCache(tmp_path / "engines")
    builders = {**BUILDERS, "trt": lambda config, profile: TrtEngine(config, cache, converter)}
    for start in range(2):
        standin.Builder.networks.clear()
        events = []
        chain = EngineChain(config, events.append, builders=builders)
        chain.prepare(64, 96)
        assert chain.name.startswith("torch-")
        (event,) = events
        assert event.data["engine"] != "trt"
        assert "'base' engine failed" in event.data["reason"]
        assert len(standin.Builder.networks) == (1 if start == 0 else 0)  # built once only
        chain.close()
    assert "failed to build before" in event.data["reason"]
