"""CUDA graphs over static-shape pieces, eager wherever a graph cannot be captured.

BackgroundMattingV2 at HD is launch-bound on a GPU: its ~150 small kernels cost more in launch
overhead than in compute (docs/performance.md, "GPU without TensorRT"), and a Jetson's CPU
launches several times slower than an x86 core. A graph replays all of a piece's kernels with one
launch, but only for the exact input shapes, dtype and device it was captured with.

`StaticGraph(fn)` is a drop-in for `fn`: on CUDA tensors it captures `fn` once per input
signature (after warm-up runs on a side stream, as torch requires) and then copies each call's
inputs into the graph's static input buffers and replays it; on the CPU, or when capture fails
(an op that synchronises with the host), it runs `fn` eagerly, logged once. The returned
tensors are the graph's static outputs: valid until the next call, which overwrites them. At
most `max_graphs` signatures keep a graph (the least recently used is dropped): region
inference hands the engine crops of changing sizes, and every graph holds its own memory.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

_LOG = logging.getLogger(__name__)

_WARMUP_RUNS = 3  # cuDNN picks algorithms and the allocator settles before capture
MAX_GRAPHS = 8  # input signatures kept as graphs per piece

Signature = tuple[tuple[tuple[int, ...], torch.dtype, torch.device], ...]


class StaticGraph:
    """`fn` replayed as a CUDA graph per input signature; eager on the CPU or where capture fails.

    Args:
        fn: a function of tensors returning a tensor or a tuple of tensors, with no host
            synchronisation and no data-dependent shapes (what a CUDA graph can hold).
        name: for the log.
        max_graphs: signatures kept as graphs, least recently used dropped first.
        capture: makes a replayable graph of (fn, inputs); raises RuntimeError when it cannot
            (default: a CUDA graph; tests inject their own).
        capturable: whether these inputs can be captured at all (default: all on CUDA).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str = "piece",
        max_graphs: int = MAX_GRAPHS,
        capture: Callable[[Callable[..., Any], Sequence[Tensor]], Replay] | None = None,
        capturable: Callable[[Sequence[Tensor]], bool] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self._max_graphs = max_graphs
        self._make = capture or _Captured
        self._capturable = capturable or _on_cuda
        self._graphs: OrderedDict[Signature, Replay] = OrderedDict()
        self._eager: set[Signature] = set()

    @property
    def captured(self) -> int:
        """How many input signatures run as graphs."""
        return len(self._graphs)

    def __call__(self, *inputs: Tensor) -> Any:
        signature = _signature(inputs)
        if signature in self._eager or not self._capturable(inputs):
            return self.fn(*inputs)
        graph = self._graphs.get(signature)
        if graph is None:
            graph = self._capture(signature, inputs)
            if graph is None:
                return self.fn(*inputs)
        self._graphs.move_to_end(signature)
        return graph.replay(inputs)

    def _capture(self, signature: Signature, inputs: Sequence[Tensor]) -> Replay | None:
        try:
            captured = self._make(self.fn, inputs)
        except RuntimeError as err:  # e.g. cudaErrorStreamCaptureInvalidated: a host sync
            _LOG.warning("%s runs eagerly: CUDA graph capture failed (%s)", self.name, err)
            self._eager.add(signature)
            return None
        self._graphs[signature] = captured
        while len(self._graphs) > self._max_graphs:
            self._graphs.popitem(last=False)
        _LOG.info("%s captured as a CUDA graph for %s", self.name, [s for s, _, _ in signature])
        return captured


class Replay(Protocol):
    """A captured graph: runs the captured function on new inputs of the captured signature."""

    def replay(self, inputs: Sequence[Tensor]) -> Any: ...


class _Captured:
    """One captured graph with its static input and output tensors."""

    def __init__(self, fn: Callable[..., Any], inputs: Sequence[Tensor]) -> None:
        self.inputs = [x.clone() for x in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(_WARMUP_RUNS):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def replay(self, inputs: Sequence[Tensor]) -> Any:
        for static, given in zip(self.inputs, inputs, strict=True):
            if static.data_ptr() != given.data_ptr():
                static.copy_(given)
        self.graph.replay()
        return self.outputs


def _signature(inputs: Sequence[Tensor]) -> Signature:
    return tuple((tuple(x.shape), x.dtype, x.device) for x in inputs)


def _on_cuda(inputs: Sequence[Tensor]) -> bool:
    return bool(inputs) and all(isinstance(x, Tensor) and x.is_cuda for x in inputs)
