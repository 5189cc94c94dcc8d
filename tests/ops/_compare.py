"""Comparison helpers for the op tests: values, first and second derivatives, per-dtype tolerances.

Correctness is e3nn's result in float64. In float64 we must match it to ``RTOL[float64]`` (relative to the
largest entry). In float32 our error against that float64 reference must stay within ``RTOL[float32]`` and
within twice e3nn's own float32 error (``ERROR_RATIO``), floored at ``FLOOR[float32]`` for entries where
e3nn happens to be exact.
"""

from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
FLOOR = {torch.float32: 1e-6, torch.float64: 1e-10}
ERROR_RATIO = 2.0


def randn(shapes: Sequence[Sequence[int]], dtype: torch.dtype, seed: int) -> List[Tensor]:
    """Standard normal tensors drawn in float64 from ``seed`` and rounded to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype) for shape in shapes]


def derivatives(fn: Callable, inputs: Sequence[Tensor], seed: int = 1234,
                round_to: Optional[torch.dtype] = None) -> Dict[str, Tensor]:
    """``fn(*inputs)``, its vector-Jacobian product and the gradient of a random projection of that.

    The random cotangents come from ``seed`` and are rounded through ``round_to`` (the dtype under test)
    so that a float64 reference sees exactly the cotangents the float32 run sees.
    """
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    round_to = round_to or out.dtype
    cotangent, *projections = randn([out.shape] + [x.shape for x in inputs], round_to, seed)
    grads = torch.autograd.grad(out, inputs, cotangent.to(out.dtype), create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
    projection = sum((g * p.to(g.dtype)).sum() for g, p in zip(grads, projections))
    if projection.requires_grad:
        grads2 = torch.autograd.grad(projection, inputs, allow_unused=True)
    else:
        grads2 = [None] * len(inputs)
    result = {"value": out.detach()}
    for i, (g, g2, x) in enumerate(zip(grads, grads2, inputs)):
        result[f"grad{i}"] = g.detach()
        result[f"grad2_{i}"] = torch.zeros_like(x) if g2 is None else g2.detach()
    return result


def error(x: Tensor, reference: Tensor) -> float:
    return float((x.double() - reference.double()).abs().max()) if x.numel() else 0.0


def scale(reference: Tensor) -> float:
    return float(reference.double().abs().max()) if reference.numel() else 0.0


def assert_close(ours: Tensor, reference: Tensor, dtype: torch.dtype, what: str = "",
                 same_precision: Optional[Tensor] = None) -> None:
    """Our ``dtype`` result against the float64 ``reference`` (and e3nn's ``dtype`` result, if given)."""
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}, expected {dtype}"
    err, size = error(ours, reference), scale(reference)
    assert err <= RTOL[dtype] * size or (size == 0 and err == 0), \
        f"{what}: max error {err:.3g} > {RTOL[dtype]:g} x max |reference| {size:.3g}"
    if same_precision is not None and dtype != torch.float64:
        theirs = error(same_precision, reference)
        allowed = max(ERROR_RATIO * theirs, FLOOR[dtype] * size)
        assert err <= allowed, (f"{what}: max error {err:.3g} > {ERROR_RATIO:g} x e3nn's own {dtype} error "
                                f"{theirs:.3g} (floor {FLOOR[dtype] * size:.3g})")


def assert_derivatives_match(ours: Dict[str, Tensor], reference: Dict[str, Tensor], dtype: torch.dtype,
                             same_precision: Optional[Dict[str, Tensor]] = None, what: str = "") -> None:
    assert ours.keys() == reference.keys()
    for key in ours:
        assert_close(ours[key], reference[key], dtype, f"{what} {key}",
                     None if same_precision is None else same_precision[key])


def compare_with_e3nn(ours_fn: Callable, e3nn_fn: Callable, e3nn_fn64: Callable, raw: Sequence[Tensor],
                      dtype: torch.dtype, what: str = "", seed: int = 1234) -> Dict[str, Tensor]:
    """Run ours and e3nn in ``dtype`` and e3nn in float64 on the same (``dtype``-rounded) inputs; compare
    values, first and second derivatives. ``raw`` are float64 inputs. Returns our derivatives."""
    inputs = [x.to(dtype) for x in raw]
    ours = derivatives(ours_fn, inputs, seed, dtype)
    reference = derivatives(e3nn_fn64, [x.double() for x in inputs], seed, dtype)
    same_precision = derivatives(e3nn_fn, inputs, seed, dtype) if dtype != torch.float64 else None
    assert_derivatives_match(ours, reference, dtype, same_precision, what)
    return ours
