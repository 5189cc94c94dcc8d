"""The harmonics swap: a MACE model's e3nn ``spherical_harmonics`` becomes ``batmobile_nn.o3.SphericalHarmonics``.

mace-torch's models compute ``edge_attrs = self.spherical_harmonics(vectors)`` with an e3nn
``o3.SphericalHarmonics``, some forty small kernels forward and as many backward per call; ours is one
kernel each way (and one for the double backward of training on forces). The module has no tensors;
the stock one is kept unregistered and comes back on unpatch.
"""

from typing import Optional

import torch
from e3nn import o3

from ..o3 import SphericalHarmonics
from ._module_swap import ModuleSwap


class SphericalHarmonicsSwap(ModuleSwap):
    """``model.spherical_harmonics`` (e3nn) -> ``batmobile_nn.o3.SphericalHarmonics``, for models of the classes given."""

    name = "spherical harmonics"
    attribute = "spherical_harmonics"
    stock_types = (o3.SphericalHarmonics,)

    def unsupported(self, stock: torch.nn.Module) -> Optional[str]:
        try:
            SphericalHarmonics.from_e3nn(stock)
        except (ValueError, AttributeError) as error:
            return str(error)
        return None

    def build(self, stock: torch.nn.Module) -> torch.nn.Module:
        return SphericalHarmonics.from_e3nn(stock)
