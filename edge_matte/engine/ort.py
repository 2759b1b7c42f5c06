"""The base network in ONNX Runtime on the CPU, the refiner staying in torch ("torch-cpu+ort").

Exported once at start with dynamic height and width (region crops vary). About as fast as the
channels-last torch base on the dev machine, so an option of the fast CPU path, not its default.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import Tensor

from edge_matte.errors import EngineError
from edge_matte.model.model import BaseNetwork, MattingBase


class OrtBaseNetwork:
    """The base network run by ONNX Runtime on the CPU: a BaseFn for `forward_with`.

    Exported once (a few seconds) with dynamic height and width; the refiner stays in torch.
    Raises EngineError when onnxruntime is missing or the export fails.
    """

    def __init__(self, model: MattingBase, threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise EngineError(f"onnxruntime is not installed: {err}") from err
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Its spinning workers would fight torch's for the cores while the refiner runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                export_base(model), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise EngineError(f"onnxruntime cannot load the exported base network: {err}") from err

    def __call__(self, x: Tensor) -> Tensor:
        out = self._session.run(None, {"x": x.detach().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def export_base(model: MattingBase, size: tuple[int, int] = (64, 64)) -> bytes:
    """The base network as ONNX (opset 17), input "x" [1, 6, h, w], output "y", h and w dynamic."""
    wrapper = BaseNetwork(model).eval()  # export restores the wrapper's mode, so it must be eval
    example = torch.zeros(1, 6, *size, dtype=next(model.parameters()).dtype)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                wrapper,
                (example.contiguous(),),
                buffer,  # type: ignore[arg-type]  # torch's annotation omits the file objects it writes to
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}},
                opset_version=17,
            )
    except Exception as err:  # the exporter raises many unrelated types
        raise EngineError(f"cannot export the base network to ONNX: {err}") from err
    return buffer.getvalue()
