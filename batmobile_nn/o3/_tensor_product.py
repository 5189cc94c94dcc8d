"""``TensorProduct``: e3nn's ``o3.TensorProduct`` (uvu and uvw paths) on our op.

Same constructor, attributes (``irreps_in1``, ``instructions``, ``weight_numel``, ...), buffers and
parameters as e3nn, so an e3nn module's ``state_dict`` loads unchanged, and the same weight layout,
so an e3nn weight tensor works unchanged.
"""

from typing import List, Optional

import torch
from e3nn import o3

from ..ops import _plan
from ..ops.tensor_product import tensor_product as _tp_op


class TensorProductBase(torch.nn.Module):
    """What the e3nn-shaped tensor-product modules share: plan, weights and e3nn's buffers."""

    # class-level annotations: TorchScript reads these (instance-level ones in __init__ only warn)
    weight_numel: int
    internal_weights: bool
    shared_weights: bool
    _plan: List[int]
    _cg: List[float]

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions: List, in1_var: Optional[List[float]] = None,
                 in2_var: Optional[List[float]] = None, out_var: Optional[List[float]] = None,
                 irrep_normalization: Optional[str] = None, path_normalization: Optional[str] = None,
                 internal_weights: Optional[bool] = None, shared_weights: Optional[bool] = None,
                 normalization: Optional[str] = None):
        super().__init__()
        if normalization is not None and irrep_normalization is None:  # e3nn's deprecated alias
            irrep_normalization = normalization
        tp_plan = _plan.make_plan(irreps_in1, irreps_in2, irreps_out, instructions, in1_var, in2_var, out_var,
                                  irrep_normalization, path_normalization)
        self.irreps_in1, self.irreps_in2, self.irreps_out = tp_plan.irreps_in1, tp_plan.irreps_in2, tp_plan.irreps_out
        self.instructions = list(tp_plan.instructions)
        self.weight_numel = tp_plan.weight_numel
        self._plan = tp_plan.plan_list
        self._cg = tp_plan.cg_list
        # e3nn's defaults for the two flags
        if shared_weights is False and internal_weights is None:
            internal_weights = False
        if shared_weights is None:
            shared_weights = True
        if internal_weights is None:
            internal_weights = shared_weights and any(i.has_weight for i in self.instructions)
        if internal_weights and not shared_weights:
            raise ValueError("internal_weights=True needs shared_weights=True (as in e3nn)")
        self.internal_weights = internal_weights
        self.shared_weights = shared_weights
        if internal_weights and self.weight_numel > 0:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))
        else:
            self.register_buffer("weight", torch.Tensor())
        self.register_buffer("output_mask", self._output_mask())
        self._compiled_main_left_right = torch.nn.Module()  # holds e3nn's state_dict entries, unused here
        for name, value in tp_plan.e3nn_buffers:
            self._compiled_main_left_right.register_buffer(name, value.to(torch.get_default_dtype()))

    def _output_mask(self) -> torch.Tensor:
        if self.irreps_out.dim == 0:
            return torch.ones(0)
        return torch.cat([
            torch.ones(mul * ir.dim) if any(i.i_out == i_out and i.path_weight != 0 and 0 not in i.path_shape
                                            for i in self.instructions) else torch.zeros(mul * ir.dim)
            for i_out, (mul, ir) in enumerate(self.irreps_out)])

    def _get_weights(self, weight: Optional[torch.Tensor]) -> torch.Tensor:
        if weight is None:
            if self.weight_numel > 0 and not self.internal_weights:
                raise ValueError("weights must be given: this module has no internal weights")
            return self.weight if self.weight_numel > 0 else self.output_mask.new_zeros(0)
        if self.shared_weights and (weight.dim() != 1 or weight.shape[0] != self.weight_numel):
            raise ValueError("shared weights must have shape [" + str(self.weight_numel) + "], got "
                             + str(list(weight.shape)))
        if not self.shared_weights and (weight.dim() == 0 or weight.shape[-1] != self.weight_numel):
            raise ValueError("weights must have shape [..., " + str(self.weight_numel) + "], got "
                             + str(list(weight.shape)))
        return weight

    def extra_repr(self) -> str:
        return (f"{self.irreps_in1.simplify()} x {self.irreps_in2.simplify()} -> {self.irreps_out.simplify()} | "
                f"{len(self.instructions)} paths | {self.weight_numel} weights")


class TensorProduct(TensorProductBase):
    """e3nn's ``o3.TensorProduct`` for ``"uvu"`` and ``"uvw"`` instructions.

    Args: as ``e3nn.o3.TensorProduct`` (``irreps_in1``, ``irreps_in2``, ``irreps_out``, ``instructions``,
    ``in1_var``, ``in2_var``, ``out_var``, ``irrep_normalization``, ``path_normalization``,
    ``internal_weights``, ``shared_weights``); ``compile_left_right``, ``compile_right`` and the private
    code-generation flags are accepted and ignored.

    Shapes: ``x [..., irreps_in1.dim]``, ``y [..., irreps_in2.dim]``, ``weight [..., weight_numel]``
    (or ``[weight_numel]`` when shared) -> ``[..., irreps_out.dim]``.

    >>> tp = TensorProduct("8x0e+8x1o", "0e+1o", "8x0e+8x1o", [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True),
    ...                    (0, 1, 1, "uvu", True), (1, 0, 1, "uvu", True)], shared_weights=False)
    >>> tp(torch.randn(5, 32), torch.randn(5, 4), torch.randn(5, tp.weight_numel)).shape
    torch.Size([5, 32])
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions: List, in1_var=None, in2_var=None,
                 out_var=None, irrep_normalization: Optional[str] = None, path_normalization: Optional[str] = None,
                 internal_weights: Optional[bool] = None, shared_weights: Optional[bool] = None,
                 compile_left_right: bool = True, compile_right: bool = False, normalization: Optional[str] = None,
                 _specialized_code: Optional[bool] = None, _optimize_einsums: Optional[bool] = None):
        super().__init__(irreps_in1, irreps_in2, irreps_out, instructions, in1_var, in2_var, out_var,
                         irrep_normalization, path_normalization, internal_weights, shared_weights, normalization)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: ``x [..., irreps_in1.dim]``, ``y [..., irreps_in2.dim]``, ``weight`` (``[..., weight_numel]``,
        ``[weight_numel]`` when shared, or None for the internal weights); leading dims broadcast as in e3nn.

        Returns: ``[..., irreps_out.dim]``. Raises ``ValueError`` for missing or misshaped weights or inputs.
        """
        w = self._get_weights(weight)
        per_sample = not self.shared_weights and w.dim() > 1
        # broadcast the leading (batch) dimensions as e3nn does; shapes only (weight_numel or a dim may be 0)
        empty = x.new_empty(())
        if per_sample:
            batch = torch.broadcast_tensors(empty.expand(x.shape[:-1]), empty.expand(y.shape[:-1]),
                                            empty.expand(w.shape[:-1]))[0].shape
        else:
            batch = torch.broadcast_tensors(empty.expand(x.shape[:-1]), empty.expand(y.shape[:-1]))[0].shape
        n = 1
        for size in batch:
            n *= size
        x = x.expand(batch + (x.shape[-1],)).reshape(n, x.shape[-1])  # [n, irreps_in1.dim]
        y = y.expand(batch + (y.shape[-1],)).reshape(n, y.shape[-1])  # [n, irreps_in2.dim]
        if self.weight_numel == 0:
            w = x.new_zeros(0)
        elif per_sample:
            w = w.expand(batch + (self.weight_numel,)).reshape(n, self.weight_numel)  # [n, weight_numel]
        if torch.jit.is_scripting():
            out = torch.ops.batmobile.tensor_product(x, y, w, self._plan, self._cg)  # [n, irreps_out.dim]
        else:  # eager: without the custom-op layers (ops/_eager.py)
            out = _tp_op(x, y, w, self._plan, self._cg)
        return out.reshape(batch + (out.shape[-1],))
