"""A recording stand-in for the `tensorrt` Python module, and upstream torch2trt loaded over it.

TensorRT needs an NVIDIA GPU; torch2trt's Python code does not, apart from `import tensorrt`.
With this module in `sys.modules["tensorrt"]`, upstream torch2trt (../shared/third_party, beside
the repository root) imports and runs its real converters on the CPU, and every layer they add
is recorded: `Network.layers` holds (kind, arguments, attributes set afterwards), so a test can
check what engine TensorRT would have been asked to build. The builder then returns
`Builder.result` (None by default: what TensorRT returns when a build fails).

Only what torch2trt touches exists (Logger, Builder, builder config, network, layers, tensors,
the enums its converters name); an enum's members are made on first use, so a converter naming
one reads as the name it used.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__version__ = "8.6.2"  # JetPack 6's TensorRT: torch2trt takes its pre-10 code paths

REPO = Path(__file__).resolve().parents[1]


def _main_checkout(repo: Path) -> Path:
    """The main checkout of a git worktree (its .git file names .git/worktrees/<name>), else repo."""
    dot_git = repo / ".git"
    if dot_git.is_file():
        gitdir = Path(dot_git.read_text(encoding="utf-8").split("gitdir:", 1)[-1].strip())
        if gitdir.parent.name == "worktrees":
            return gitdir.parents[2]
    return repo


def _torch2trt_dir() -> Path:
    """shared/third_party/torch2trt beside the repository (as CI copies it), or in it."""
    candidates = [
        root / "shared" / "third_party" / "torch2trt"
        for base in (REPO, _main_checkout(REPO))
        for root in (base.parent, base)
    ]
    return next((path for path in candidates if path.is_dir()), candidates[0])


TORCH2TRT = _torch2trt_dir()
MISSING = f"upstream torch2trt is not at {TORCH2TRT} (shared/ beside the repository root)"


class Member:
    """One enum value: compares by (enum, name), converts to int like TensorRT's enums."""

    def __init__(self, enum: str, name: str, value: int) -> None:
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Member) and (other.enum, other.name) == (self.enum, self.name)

    def __hash__(self) -> int:
        return hash((self.enum, self.name))

    def __repr__(self) -> str:
        return f"{self.enum}.{self.name}"


class Enum:
    """A TensorRT enum whose members come into being when named."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._members: dict[str, Member] = {}

    def __getattr__(self, name: str) -> Member:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._members.setdefault(name, Member(self._name, name, len(self._members)))


class DataType(Member):
    """trt.float32 and friends."""

    def __init__(self, name: str, value: int) -> None:
        super().__init__("DataType", name, value)


float32, float16, int8, int32, bool = (  # noqa: A001 - TensorRT's names
    DataType(name, value) for value, name in enumerate(("FLOAT", "HALF", "INT8", "INT32", "BOOL"))
)

ActivationType = Enum("ActivationType")
ElementWiseOperation = Enum("ElementWiseOperation")
ScaleMode = Enum("ScaleMode")
PoolingType = Enum("PoolingType")
ReduceOperation = Enum("ReduceOperation")
UnaryOperation = Enum("UnaryOperation")
MatrixOperation = Enum("MatrixOperation")
ResizeMode = Enum("ResizeMode")
InterpolationMode = Enum("InterpolationMode")
ResizeCoordinateTransformation = Enum("ResizeCoordinateTransformation")
DeviceType = Enum("DeviceType")
BuilderFlag = Enum("BuilderFlag")
NetworkDefinitionCreationFlag = Enum("NetworkDefinitionCreationFlag")
TensorLocation = Enum("TensorLocation")
CalibrationAlgoType = Enum("CalibrationAlgoType")
LayerType = Enum("LayerType")
PluginFieldType = Enum("PluginFieldType")


class ITensor:
    """A network tensor: shape, dtype and what torch2trt sets on it (name, location)."""

    def __init__(self, shape: tuple[int, ...], dtype: DataType = float32, name: str = "") -> None:
        self.shape, self.dtype, self.name = tuple(shape), dtype, name
        self.location: Member | None = None


class ILayer:
    """A recorded layer: `kind` is the `add_<kind>` that made it; later attribute sets are kept."""

    def __init__(self, kind: str, args: tuple, kwargs: dict[str, Any], output: ITensor) -> None:
        self.__dict__.update(kind=kind, args=args, kwargs=kwargs, attributes={}, outputs=[output])
        self.__dict__.update(name="", type=getattr(LayerType, kind.upper()))

    def __setattr__(self, name: str, value: Any) -> None:
        self.attributes[name] = value
        self.__dict__[name] = value

    @property
    def inputs(self) -> list[ITensor]:
        found = [*self.args, *self.kwargs.values()]
        flat = [y for x in found for y in (x if isinstance(x, (list, tuple)) else [x])]
        return [x for x in flat if isinstance(x, ITensor)]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]

    def set_input(self, index: int, tensor: ITensor) -> None:
        self.attributes[f"input_{index}"] = tensor

    def set_output_type(self, index: int, dtype: DataType) -> None:
        self.attributes[f"output_type_{index}"] = dtype


class Network:
    """INetworkDefinition: `add_<kind>(...)` records a layer whose output is shaped like its first
    input (or as the call says: constants, slices, shapes); torch2trt's converters only read
    shapes for their rank, and `conversion_shapes` sets the true ones from torch's outputs."""

    def __init__(self, flags: int = 0) -> None:
        self.flags = flags
        self.layers: list[ILayer] = []
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []

    def add_input(self, name: str, shape: tuple[int, ...], dtype: DataType) -> ITensor:
        tensor = ITensor(shape, dtype, name)
        self.inputs.append(tensor)
        return tensor

    def mark_output(self, tensor: ITensor) -> None:
        self.outputs.append(tensor)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> ILayer:
        return self.layers[index]

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("add_"):
            raise AttributeError(name)
        kind = name[len("add_") :]

        def add(*args: Any, **kwargs: Any) -> ILayer:
            layer = ILayer(kind, args, kwargs, ITensor(()))
            layer.outputs[0] = ITensor(_output_shape(kind, layer, args, kwargs), _dtype(layer))
            self.layers.append(layer)
            return layer

        return add

    def of_kind(self, kind: str) -> list[ILayer]:
        return [layer for layer in self.layers if layer.kind == kind]


def _output_shape(kind: str, layer: ILayer, args: tuple, kwargs: dict[str, Any]) -> tuple[int, ...]:
    if kind == "constant":
        return tuple(args[0] if args else kwargs["shape"])
    if kind == "slice":
        return tuple(args[2] if len(args) > 2 else kwargs["shape"])
    if kind == "shape":
        return (len(layer.inputs[0].shape),)
    return layer.inputs[0].shape if layer.inputs else ()


def _dtype(layer: ILayer) -> DataType:
    return layer.inputs[0].dtype if layer.inputs else float32


class BuilderConfig:
    """IBuilderConfig: flags and per-layer device types recorded, any setting accepted."""

    def __init__(self) -> None:
        self.flags: list[Member] = []
        self.profiles: list[Any] = []

    def set_flag(self, flag: Member) -> None:
        self.flags.append(flag)

    def set_device_type(self, layer: ILayer, device_type: Member) -> None:
        layer.__dict__["device_type"] = device_type

    def can_run_on_DLA(self, layer: ILayer) -> bool:  # noqa: N802 - TensorRT's name
        return False

    def add_optimization_profile(self, profile: Any) -> None:
        self.profiles.append(profile)

    def set_calibration_profile(self, profile: Any) -> None:
        self.profiles.append(profile)


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
        self.shapes[name] = (low, opt, high)


class Logger:
    VERBOSE, INFO, WARNING, ERROR, INTERNAL_ERROR = range(5)

    def __init__(self, level: int = WARNING) -> None:
        self.level = level

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class Builder:
    """IBuilder: every network it creates is kept; `build_engine` returns `Builder.result`."""

    networks: ClassVar[list[Network]] = []
    result: Any = None  # what TensorRT returns for a failed build

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_network(self, flags: int = 0) -> Network:
        network = Network(flags)
        Builder.networks.append(network)
        return network

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_engine(self, network: Network, config: BuilderConfig) -> Any:
        return Builder.result

    build_serialized_network = build_engine


class IHostMemory:
    """A serialized engine (never made here)."""


class IInt8Calibrator:
    """Base class torch2trt's calibrator derives from at import."""


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def deserialize_cuda_engine(self, data: bytes) -> None:
        raise RuntimeError("the TensorRT stand-in cannot run engines")


class _PluginRegistry:
    plugin_creator_list: ClassVar[list[Any]] = []


def get_plugin_registry() -> _PluginRegistry:
    return _PluginRegistry()


def load_torch2trt() -> types.ModuleType:
    """Upstream torch2trt imported over this stand-in (sys.modules["tensorrt"] set to it).

    Raises FileNotFoundError (MISSING) where the shared copy is absent. Every converter is
    wrapped once so that, after it runs, the TensorRT tensors of its torch outputs carry the
    true shapes (the stand-in cannot infer them), as a real network's would.
    """
    if not TORCH2TRT.is_dir():
        raise FileNotFoundError(MISSING)
    sys.modules["tensorrt"] = sys.modules[__name__]
    if str(TORCH2TRT) not in sys.path:
        sys.path.insert(0, str(TORCH2TRT))
    torch2trt = importlib.import_module("torch2trt")
    shape_converters()
    return torch2trt


def shape_converters() -> None:
    """Wrap the converters registered since the last call (e.g. the project's own) as above."""
    core = importlib.import_module("torch2trt.torch2trt")
    for entry in core.CONVERTERS.values():
        if not getattr(entry["converter"], "_shaped", False):
            entry["converter"] = _shaping(entry["converter"], core.use_shape_wrapping)


def _shaping(convert: Any, use_shape_wrapping: Any) -> Any:
    def run(ctx: Any) -> None:
        convert(ctx)
        with use_shape_wrapping(False):
            for output in _tensors(ctx.method_return):
                trt_tensor = getattr(output, "_trt", None)
                if isinstance(trt_tensor, ITensor):
                    trt_tensor.shape = tuple(output.shape)

    run._shaped = True  # type: ignore[attr-defined]
    return run


def _tensors(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif hasattr(value, "shape") and not isinstance(value, np.ndarray):
        yield value
