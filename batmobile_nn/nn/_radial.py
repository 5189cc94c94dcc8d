"""``FullyConnectedNet``: e3nn's ``nn.FullyConnectedNet`` with SiLU (MACE's radial MLP) in fewer kernels.

e3nn's layer computes ``act(x @ (w / sqrt(fan_in))) * cst`` as five kernels (the weight's scaling, the
product, the activation, its normalization constant and a multiply by ``var_out ** 0.5``); here each layer
is one ``addmm`` whose ``alpha`` carries the weight's scaling and the previous activation's constant, and
the activation. Same parameters (the stock layers themselves, same ``state_dict``), same function.
"""

from typing import List, Optional

import torch
from e3nn import nn as e3nn_nn
from torch import Tensor

from ._pairing import CONV_TO_RADIAL, RADIAL_TO_CONV, partner


def unsupported(stock: torch.nn.Module) -> Optional[str]:
    """Why ``stock`` is not an e3nn ``FullyConnectedNet`` with normalized SiLU hidden activations (None when it is)."""
    if not isinstance(stock, e3nn_nn.FullyConnectedNet):
        return f"it is a {type(stock).__module__}.{type(stock).__qualname__}, not an e3nn FullyConnectedNet"
    for layer in stock:
        act = getattr(layer, "act", None)
        if act is not None and getattr(act, "f", None) is not torch.nn.functional.silu:
            return f"its activation is {act!r}, not e3nn's normalized SiLU"
        if act is not None and not (hasattr(act, "cst") and hasattr(act, "_is_id")):
            return "its activation has no normalization constant (another e3nn version's layers?)"
        if not all(hasattr(layer, name) for name in ("weight", "h_in", "var_in", "var_out")):
            return "a layer lacks e3nn's weight / h_in / var_in / var_out (another e3nn version's layers?)"
        if layer.weight.dim() != 2:
            return "a layer's weight is not a matrix"
    return None


class FullyConnectedNet(torch.nn.Module):
    """e3nn's ``nn.FullyConnectedNet(hs, torch.nn.functional.silu, ...)``: the same layers and parameters.

    Args:
        hs: input, hidden and output sizes.
        act: ``torch.nn.functional.silu`` (the one activation supported).
        variance_in, variance_out, out_act: as e3nn's.

    >>> mlp = FullyConnectedNet([8, 64, 64, 1280])
    >>> mlp(torch.randn(5, 8)).shape
    torch.Size([5, 1280])

    Paired with a block's convolution by ``patch``'s default fusion, it returns ``[..., hs[-2]]`` while
    ``last_layer_deferred()`` (see there).
    """

    hs: List[int]
    _alphas: List[float]  # per layer: the product's scale (weight normalization x previous activation constant)
    _acts: List[bool]
    _out_scale: float  # the last activation's constant (out_act), else 1

    def __init__(self, hs: List[int], act=torch.nn.functional.silu, variance_in: float = 1, variance_out: float = 1,
                 out_act: bool = False, *, _stock: Optional[e3nn_nn.FullyConnectedNet] = None):
        super().__init__()
        if _stock is None and act is not torch.nn.functional.silu:
            raise ValueError(f"FullyConnectedNet: the activation must be torch.nn.functional.silu, got {act!r}")
        stock = _stock if _stock is not None else e3nn_nn.FullyConnectedNet(hs, act, variance_in, variance_out, out_act)
        reason = unsupported(stock)
        if reason is not None:
            raise ValueError(f"FullyConnectedNet: {stock} is not supported: {reason}")
        self.hs = list(stock.hs)
        self._alphas, self._acts = [], []
        previous = 1.0  # the constant the previous layer's output still has to be multiplied by
        for i, layer in enumerate(stock):
            self.add_module(f"layer{i}", layer)  # the stock layer itself: same parameter, same state_dict key
            if layer.act is not None:
                scale = (layer.h_in * layer.var_in) ** -0.5
                after = (1.0 if layer.act._is_id else layer.act.cst) * layer.var_out ** 0.5
            else:
                scale, after = (layer.h_in * layer.var_in / layer.var_out) ** -0.5, 1.0
            self._alphas.append(previous * scale)
            self._acts.append(layer.act is not None)
            previous = after
        self._out_scale = previous

    @classmethod
    def from_e3nn(cls, stock: e3nn_nn.FullyConnectedNet) -> "FullyConnectedNet":
        """The module computing what ``stock`` computes, holding ``stock``'s layers."""
        return cls(getattr(stock, "hs", []), _stock=stock)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., hs[0]]`` -> ``[..., hs[-1]]``; ``[..., hs[-2]]`` (all layers but the last) while
        ``last_layer_deferred()`` (``patch``'s default fusion: the block's convolution applies the last layer)."""
        batch = list(x.shape[:-1])
        if not torch.jit.is_scripting() and self.last_layer_deferred():
            return self.hidden(x).reshape(batch + [self.hs[-2]])  # [..., hs[-2]]
        h = self._layers(x.reshape(-1, x.shape[-1]), len(self._acts))  # [n, hs[-1]]
        if self._out_scale != 1.0:
            h = h * self._out_scale
        return h.reshape(batch + [h.shape[-1]])

    def _layers(self, h: Tensor, count: int) -> Tensor:
        """The first ``count`` layers on ``h [n, hs[0]]``."""
        empty = h.new_empty(())  # addmm's first argument, not read (beta = 0)
        for i, layer in enumerate(self.children()):
            if i < count:
                h = torch.addmm(empty, h, layer.weight, beta=0, alpha=self._alphas[i])  # [n, hs[i + 1]]
                if self._acts[i]:
                    h = torch.nn.functional.silu(h)
        return h

    @torch.jit.unused
    def last_layer_deferred(self) -> bool:
        """Whether this call stops before the last layer, which the paired convolution then applies
        (``nn/_pairing.py``): not under TorchScript, and while the last layer's weight needs no gradient
        (inference and MD, or mace's ``--freeze`` of the interactions), where keeping ``[n, hs[-2]]`` instead of
        ``[n, hs[-1]]`` lowers the peak. Whoever calls a paired MLP then gets ``[n, hs[-2]]``."""
        return partner(self, RADIAL_TO_CONV, CONV_TO_RADIAL) is not None and not (
            torch.is_grad_enabled() and self.last_weight().requires_grad)

    def last_layer_unsupported(self) -> Optional[str]:
        """Why the last layer is not a plain linear map that a convolution can take in (None when it is)."""
        if len(self._acts) < 2:
            return "it has a single layer"
        if self._acts[-1] or self._out_scale != 1.0:
            return "its last layer has an activation"
        return None

    @torch.jit.export
    def hidden(self, x: Tensor) -> Tensor:
        """All layers but the last: ``x [n, hs[0]]`` -> ``[n, hs[-2]]``; the network's output is then
        ``last_alpha() * hidden @ last_weight()`` (when ``last_layer_unsupported()`` is None)."""
        return self._layers(x.reshape(-1, x.shape[-1]), len(self._acts) - 1)

    @torch.jit.export
    def last_weight(self) -> Tensor:
        """The last layer's weight ``[hs[-2], hs[-1]]`` (the parameter itself)."""
        weight = torch.empty(0)
        for layer in self.children():
            weight = layer.weight
        return weight

    @torch.jit.export
    def last_alpha(self) -> float:
        """The last layer's scale (its weight normalization times the previous activation's constant)."""
        return self._alphas[-1]

    def extra_repr(self) -> str:
        return f"{self.hs}, silu"
