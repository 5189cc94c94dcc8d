"""Inputs and comparisons for the CUDA tests: random graphs with an isolated node, seeded inputs on the
GPU, and the value / first / second-derivative comparison of ``tests/ops/_compare.py`` on the GPU."""

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ops._compare import assert_derivatives_match

DEVICE = torch.device("cuda")


def random_graph(n_nodes: int, n_edges: int, seed: int, isolated: Optional[int] = 0, index_dtype=torch.int64,
                 sort_by_receiver: bool = False) -> Tuple[Tensor, Tensor]:
    """``(sender, receiver)`` on the GPU; node ``isolated`` (if not None) has no edge in or out."""
    generator = torch.Generator().manual_seed(seed)
    candidates = torch.tensor([n for n in range(n_nodes) if n != isolated])
    sender = candidates[torch.randint(0, len(candidates), (n_edges,), generator=generator)]
    receiver = candidates[torch.randint(0, len(candidates), (n_edges,), generator=generator)]
    if sort_by_receiver:
        order = torch.argsort(receiver, stable=True)
        sender, receiver = sender[order], receiver[order]
    return sender.to(DEVICE, index_dtype), receiver.to(DEVICE, index_dtype)


def randn(shapes, dtype: torch.dtype, seed: int, device: Optional[torch.device] = None):
    """Standard normal tensors drawn in float64 on the CPU from ``seed``, rounded to ``dtype``, on ``device``
    (default: the GPU)."""
    generator = torch.Generator().manual_seed(seed)
    device = DEVICE if device is None else device
    return [torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
            for shape in shapes]


def derivatives(fn: Callable, inputs: Sequence[Tensor], seed: int, round_to: torch.dtype) -> Dict[str, Tensor]:
    """``fn(*inputs)``, its vector-Jacobian product and the gradient of a random projection of that
    (``tests/ops/_compare.derivatives`` with the random cotangents on the inputs' device)."""
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    cotangent, *projections = randn([out.shape] + [x.shape for x in inputs], round_to, seed, out.device)
    grads = torch.autograd.grad(out, inputs, cotangent.to(out.dtype), create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
    projection = sum((g * p.to(g.dtype)).sum() for g, p in zip(grads, projections))
    grads2 = [None] * len(inputs)
    if projection.requires_grad:
        grads2 = torch.autograd.grad(projection, inputs, allow_unused=True)
    result = {"value": out.detach()}
    for i, (g, g2, x) in enumerate(zip(grads, grads2, inputs)):
        result[f"grad{i}"] = g.detach()
        result[f"grad2_{i}"] = torch.zeros_like(x) if g2 is None else g2.detach()
    return result


def compare(ours_fn: Callable, reference_fn: Callable, raw: Sequence[Tensor], dtype: torch.dtype, what: str = "",
            seed: int = 1234) -> Dict[str, Tensor]:
    """Ours in ``dtype`` against the reference in float64 (and, for float32, within twice the reference's own
    float32 error) on the same ``dtype``-rounded inputs: values, first and second derivatives."""
    inputs = [x.to(dtype) for x in raw]
    ours = derivatives(ours_fn, inputs, seed, dtype)
    reference = derivatives(reference_fn, [x.double() for x in inputs], seed, dtype)
    same_precision = derivatives(reference_fn, inputs, seed, dtype) if dtype != torch.float64 else None
    assert_derivatives_match(ours, reference, dtype, same_precision, what)
    return ours
