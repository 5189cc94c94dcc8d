"""Pure-PyTorch implementations of every op: the CPU path and the test oracle.

Same signatures as the ops in ``batmobile_nn.ops`` (``torch.ops.batmobile.*``).
"""

from .conv import conv, conv_backward, conv_double_backward, conv_radial
from .element_linear import element_linear, element_outer
from .linear import linear, linear_outer
from .spherical_harmonics import (spherical_harmonics, spherical_harmonics_backward,
                                  spherical_harmonics_double_backward)
from .symmetric_contraction import (symmetric_contraction, symmetric_contraction_backward,
                                    symmetric_contraction_double_backward)
from .tensor_product import tensor_product, tensor_product_backward

__all__ = ["spherical_harmonics", "spherical_harmonics_backward", "spherical_harmonics_double_backward",
           "tensor_product", "tensor_product_backward", "conv", "conv_backward", "conv_double_backward", "conv_radial",
           "symmetric_contraction",
           "symmetric_contraction_backward", "symmetric_contraction_double_backward", "element_linear", "element_outer",
           "linear", "linear_outer"]
