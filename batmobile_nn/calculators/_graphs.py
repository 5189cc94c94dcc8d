"""``CudaGraphStep``: a MACE model's whole call (energy, and forces and stress by autograd) replayed from a
CUDA graph.

Molecular dynamics of small systems is bound by kernel launches and Python, not by the GPU (MACE-MP-
medium at 1,000 atoms on an H200: 3.7 ms of kernels in a 27.5 ms step). A CUDA graph launches the
whole step at once. It needs fixed shapes, which the calculator gets from mace's own padding (a fake
graph pads atoms and edges up to a budget that grows by 25% when outgrown), and fixed memory: the
inputs are copied into buffers captured with the graph and the outputs are cloned out of it. A call
whose inputs differ in any shape, dtype or keyword argument captures a new graph (one per signature is
kept; a grown padding makes a new signature).
"""

import warnings
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

WARMUP_CALLS = 2  # before a capture, on a side stream: first-use compiles, caches and allocator pools


class CudaGraphStep(torch.nn.Module):
    """Wraps ``model`` (``_orig_mod``); ``forward(data, **kwargs)`` returns what ``model(data, **kwargs)``
    returns, computed by replaying a CUDA graph captured for that input signature. Attributes it lacks
    come from the wrapped model."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self._orig_mod = model
        self._graphs: Dict[tuple, Tuple[torch.cuda.CUDAGraph, Dict[str, Any], Dict[str, Any]]] = {}
        self.captures = 0  # how many graphs were captured (re-captures included)
        self.eager = False  # set when a capture failed: the model then runs without graphs

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("_orig_mod"), name)

    @staticmethod
    def signature(data: Dict[str, Any], kwargs: Dict[str, Any]) -> tuple:
        tensors = tuple(sorted((key, tuple(value.shape), value.dtype, value.device) for key, value in data.items()
                               if torch.is_tensor(value)))
        others = tuple(sorted((key, repr(value)) for key, value in data.items() if not torch.is_tensor(value)))
        return tensors, others, tuple(sorted((key, repr(value)) for key, value in kwargs.items()))

    def forward(self, data: Dict[str, Any], **kwargs) -> Dict[str, Optional[Tensor]]:
        if self.eager:
            return self._orig_mod(data, **kwargs)
        key = self.signature(data, kwargs)
        if key not in self._graphs:
            self._graphs.clear()  # one graph at a time: its buffers and memory pool are freed
            try:
                self._graphs[key] = self._capture(data, kwargs)
            except RuntimeError as exc:  # e.g. a part on the reference path, which reads data to the host
                warnings.warn(f"batmobile_nn: this model cannot be captured in a CUDA graph "
                              f"({(str(exc).splitlines() or [''])[0][:160]}); it runs without graphs "
                              "(cuda_graphs=False does so without trying).", RuntimeWarning, stacklevel=2)
                self.eager = True
                return self._orig_mod(data, **kwargs)
        graph, inputs, outputs = self._graphs[key]
        with torch.no_grad():
            for name, buffer in inputs.items():
                if torch.is_tensor(buffer):
                    buffer.copy_(data[name])
        graph.replay()
        return {name: value.clone() if torch.is_tensor(value) else value for name, value in outputs.items()}

    def _capture(self, data: Dict[str, Any], kwargs: Dict[str, Any]):
        inputs = {name: value.detach().clone() if torch.is_tensor(value) else value for name, value in data.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._orig_mod(dict(inputs), **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self._orig_mod(dict(inputs), **kwargs)
        self.captures += 1
        return graph, inputs, outputs
