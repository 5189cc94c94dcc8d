"""e3nn-shaped modules (``e3nn.o3`` names and signatures) running on the batmobile ops."""

from ._linear import Linear
from ._spherical_harmonics import SphericalHarmonics, spherical_harmonics
from ._tensor_product import TensorProduct, TensorProductBase

__all__ = ["Linear", "SphericalHarmonics", "spherical_harmonics", "TensorProduct", "TensorProductBase"]
